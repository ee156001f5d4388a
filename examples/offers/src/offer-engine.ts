// offer-engine: gathers one visitor's offers for a window (OFFER_WINDOW_MS, 2 s by
// default, from the first message about the visitor), then posts one
// `offers.assembled` with all of them, tagged with the visitor's segment (and `vip` for
// a Platinum member): a river that wants only VIP offers subscribes with `--tag vip`.
//
// Nothing is lost or doubled across a crash:
// - a message is acknowledged only once the event it went into was posted; until then
//   it comes back after its visibility timeout (OFFERS_VISIBILITY_MS, above the
//   window), and no window closes before the engine has run that long, so the messages
//   a crashed predecessor held come back into the window they belong to;
// - before posting, the event is written to the pond (an outbox): a message already
//   in a recorded event is acknowledged at once instead of gathered again, and at
//   start-up every recorded event is posted again (its id is the same: the bus stores
//   it once);
// - the pond also remembers each visitor's segment and level, so an offer arriving
//   after its window is assembled with the right tags.
import { ack, type BusMessage, bus, derivedId, loop, post, type PostEvent, receive, stopped, subscribe, text } from "./bus.js";
import { MEMBERSHIP_RECOGNISED, OFFER_PROPOSED, OFFERS_ASSEMBLED, PLATINUM, SEGMENT_ASSIGNED } from "./offers.js";
import { Pond } from "./pond.js";

const name = "offer-engine";
const river = process.env.RIVER ?? name;
const windowMs = Number(process.env.OFFER_WINDOW_MS ?? 2000);
const visibilityMs = Number(process.env.OFFERS_VISIBILITY_MS ?? windowMs + 10_000);
const started = Date.now();
/** When a window opened at `opened` closes. */
const closing = (opened: number) => Math.max(opened + windowMs, started + visibilityMs);

/** What is gathered about one visitor in a window. */
interface Gathered {
  opened: number;
  receipts: Map<string, string>; // event id → latest receipt
  offers: Map<string, string>; // event id → offer
  pageViews: Set<string>;
}

/** The pond: each event assembled (the outbox) with the messages in it, and each
 * visitor's segment and level. */
type Kept = { event: PostEvent; members: string[] } | { segment: string; level: string };
const pond = new Pond<Kept>(name);
const assembled = (eventId: string) => pond.find((kept) => "members" in kept && kept.members.includes(eventId));
const profile = (visitor: string) => {
  const kept = pond.get(`visitor:${visitor}`);
  return kept && "segment" in kept ? kept : { segment: "", level: "" };
};

const gathering = new Map<string, Gathered>();
const client = bus();

/** Takes a message into its visitor's window; true when it was already assembled. */
function gather(message: BusMessage, receipt: string): boolean {
  if (assembled(message.eventId)) return true;
  const visitor = text(message, "visitor");
  if (message.eventType === SEGMENT_ASSIGNED) {
    pond.set(`visitor:${visitor}`, { ...profile(visitor), segment: text(message, "segment") });
  }
  if (message.eventType === MEMBERSHIP_RECOGNISED) {
    pond.set(`visitor:${visitor}`, { ...profile(visitor), level: text(message, "level") });
  }
  let g = gathering.get(visitor);
  if (!g) {
    g = { opened: Date.now(), receipts: new Map(), offers: new Map(), pageViews: new Set() };
    gathering.set(visitor, g);
  }
  g.receipts.set(message.eventId, receipt);
  g.pageViews.add(text(message, "page_view"));
  if (message.eventType === OFFER_PROPOSED) g.offers.set(message.eventId, text(message, "offer"));
  return false;
}

/** Posts a closed window's event (recorded first), then acknowledges its messages. */
async function assemble(visitor: string, g: Gathered): Promise<void> {
  const members = [...g.receipts.keys()].sort();
  const { segment, level } = profile(visitor);
  const tags: Record<string, string> = { segment: segment || "unknown" };
  if (level === PLATINUM) tags.vip = "true";
  const event: PostEvent = {
    type: OFFERS_ASSEMBLED,
    source: name,
    partition_key: visitor,
    event_id: derivedId(name, ...members),
    tags,
    data: { visitor, page_views: [...g.pageViews].sort(), offers: [...g.offers.values()].sort(), segment, level },
  };
  pond.set(`assembled:${event.event_id}`, { event, members });
  await post(client, event);
  await ack(client, river, [...g.receipts.values()]);
  gathering.delete(visitor);
}

await loop(name, () => subscribe(client, river, [{ topic: OFFER_PROPOSED }, { topic: SEGMENT_ASSIGNED }, { topic: MEMBERSHIP_RECOGNISED }]), true);
// what a predecessor recorded and perhaps did not post
for (const kept of pond.values()) if ("event" in kept) await loop(name, () => post(client, kept.event), true);
console.log(`${name}: reading river ${river}, window ${windowMs} ms`);
await loop(name, async () => {
  // wait no longer than the first window still open
  const closes = Math.min(...[...gathering.values()].map((g) => closing(g.opened)));
  const waitMs = Math.max(0, Math.min(5000, closes - Date.now()));
  const done: string[] = [];
  for (const { receipt, message } of await receive(client, river, visibilityMs, waitMs)) {
    if (!text(message, "visitor") || gather(message, receipt)) done.push(receipt);
  }
  await ack(client, river, done);
  for (const [visitor, g] of gathering) {
    if (!stopped() && Date.now() >= closing(g.opened)) await assemble(visitor, g);
  }
});
