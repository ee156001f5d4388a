// membership: recognises a visitor's membership level. Its members are a table
// (OFFERS_MEMBERS, JSON {name: level}); everyone else is "none".
import { serve, text } from "./bus.js";
import { MEMBERSHIP_RECOGNISED, PAGE_VIEWED, PLATINUM } from "./offers.js";

const members: Record<string, string> = JSON.parse(
  process.env.OFFERS_MEMBERS ?? JSON.stringify({ Sally: PLATINUM, Bob: "gold" }),
);

await serve("membership", [{ topic: PAGE_VIEWED }], async (message) => {
  const visitor = text(message, "name");
  const level = members[visitor] ?? "none";
  return [{ type: MEMBERSHIP_RECOGNISED, partition_key: visitor, data: { visitor, page_view: message.eventId, level } }];
});
