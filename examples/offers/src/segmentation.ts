// segmentation: says which segment a visitor belongs to. Its rules are a table
// (OFFERS_SEGMENTS, JSON {name: segment}); everyone else is "casual".
import { serve, text } from "./bus.js";
import { PAGE_VIEWED, ROAD_WARRIOR, SEGMENT_ASSIGNED } from "./offers.js";

const segments: Record<string, string> = JSON.parse(
  process.env.OFFERS_SEGMENTS ?? JSON.stringify({ Sally: ROAD_WARRIOR, Bob: ROAD_WARRIOR }),
);

await serve("segmentation", [{ topic: PAGE_VIEWED }], async (message) => {
  const visitor = text(message, "name");
  const segment = segments[visitor] ?? "casual";
  return [{ type: SEGMENT_ASSIGNED, partition_key: visitor, data: { visitor, page_view: message.eventId, segment } }];
});
