// offer-engine: gathers one visitor's offers for a window (OFFER_WINDOW_MS, 2 s by
// default, from the first message about the visitor), then posts one
// `offers.assembled` with all of them, tagged with the visitor's segment (and `vip` for
// a Platinum member): a river that wants only VIP offers subscribes with `--tag vip`.
//
// Its pond is its river: a message is acknowledged only once the offers it belongs to
// were posted, so a crash loses nothing; the messages come back after their visibility
// timeout (OFFERS_VISIBILITY_MS, above the window) and are gathered again. So that they
// come back into the window they belong to, no window closes before the engine has run
// for that long. The assembled event's id is derived from the messages it gathers:
// posted again, it is stored once.
import { ack, type BusMessage, bus, derivedId, post, receive, subscribe, text } from "./bus.js";
import { MEMBERSHIP_RECOGNISED, OFFER_PROPOSED, OFFERS_ASSEMBLED, PLATINUM, SEGMENT_ASSIGNED } from "./offers.js";

const name = "offer-engine";
const river = process.env.RIVER ?? name;
const windowMs = Number(process.env.OFFER_WINDOW_MS ?? 2000);
const visibilityMs = Number(process.env.OFFERS_VISIBILITY_MS ?? windowMs + 10_000);
const started = Date.now();
/** When a window opened at `opened` closes. */
const closing = (opened: number) => Math.max(opened + windowMs, started + visibilityMs);

/** What is gathered about one visitor. */
interface Gathered {
  opened: number;
  receipts: Map<string, string>; // event id → latest receipt
  offers: Map<string, string>; // event id → offer
  pageViews: Set<string>;
  segment: string;
  level: string;
}

const gathering = new Map<string, Gathered>();
let stopping = false;
for (const signal of ["SIGTERM", "SIGINT"] as const) process.on(signal, () => (stopping = true));

function gather(message: BusMessage, receipt: string): void {
  const visitor = text(message, "visitor");
  let g = gathering.get(visitor);
  if (!g) {
    g = { opened: Date.now(), receipts: new Map(), offers: new Map(), pageViews: new Set(), segment: "", level: "" };
    gathering.set(visitor, g);
  }
  g.receipts.set(message.eventId, receipt);
  g.pageViews.add(text(message, "page_view"));
  if (message.eventType === OFFER_PROPOSED) g.offers.set(message.eventId, text(message, "offer"));
  if (message.eventType === SEGMENT_ASSIGNED) g.segment = text(message, "segment");
  if (message.eventType === MEMBERSHIP_RECOGNISED) g.level = text(message, "level");
}

const client = bus();
await subscribe(client, river, [{ topic: OFFER_PROPOSED }, { topic: SEGMENT_ASSIGNED }, { topic: MEMBERSHIP_RECOGNISED }]);
console.log(`${name}: reading river ${river}, window ${windowMs} ms`);
while (!stopping) {
  // wait no longer than the first window still open
  const closes = Math.min(...[...gathering.values()].map((g) => closing(g.opened)));
  const waitMs = Math.max(0, Math.min(5000, closes - Date.now()));
  for (const { receipt, message } of await receive(client, river, visibilityMs, waitMs)) gather(message, receipt);
  const now = Date.now();
  for (const [visitor, g] of gathering) {
    if (now < closing(g.opened)) continue;
    const ids = [...g.receipts.keys()].sort();
    const tags: Record<string, string> = { segment: g.segment || "unknown" };
    if (g.level === PLATINUM) tags.vip = "true";
    await post(client, {
      type: OFFERS_ASSEMBLED,
      source: name,
      partition_key: visitor,
      event_id: derivedId(name, ...ids),
      tags,
      data: {
        visitor,
        page_views: [...g.pageViews].sort(),
        offers: [...g.offers.values()].sort(),
        segment: g.segment,
        level: g.level,
      },
    });
    await ack(client, river, [...g.receipts.values()]);
    gathering.delete(visitor);
  }
}
