// location: a baseline offer for every page view, one more for a Road Warrior, and one
// for a Road Warrior who is also a Platinum member. The last needs both answers of
// one page view, which come in either order: its pond keeps what it saw of each.
import { serve, text } from "./bus.js";
import { Pond } from "./pond.js";
import { MEMBERSHIP_RECOGNISED, offer, PAGE_VIEWED, PLATINUM, ROAD_WARRIOR, SEGMENT_ASSIGNED } from "./offers.js";

interface Seen {
  roadWarrior: boolean;
  platinum: boolean;
}
const pond = new Pond<Seen>("location");

await serve(
  "location",
  [{ topic: PAGE_VIEWED }, { topic: SEGMENT_ASSIGNED }, { topic: MEMBERSHIP_RECOGNISED }],
  async (message) => {
    const visitor = text(message, "visitor") || text(message, "name");
    if (message.eventType === PAGE_VIEWED) return [offer("location", visitor, message.eventId, "baseline")];
    const pageView = text(message, "page_view");
    const before = pond.get(pageView) ?? { roadWarrior: false, platinum: false };
    const seen = {
      roadWarrior: before.roadWarrior || text(message, "segment") === ROAD_WARRIOR,
      platinum: before.platinum || text(message, "level") === PLATINUM,
    };
    const answers = [];
    if (message.eventType === SEGMENT_ASSIGNED && seen.roadWarrior) {
      answers.push(offer("location", visitor, pageView, ROAD_WARRIOR));
    }
    // the second of the two answers completes the pair: exactly one of them offers it
    const completes = seen.roadWarrior && seen.platinum && !(before.roadWarrior && before.platinum);
    if (completes) answers.push(offer("location", visitor, pageView, `${ROAD_WARRIOR}+${PLATINUM}`));
    return { answers, keep: () => pond.set(pageView, seen) };
  },
);
