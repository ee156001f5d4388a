// brand: a baseline offer for every page view, and one more for a Road Warrior.
import { serve, text } from "./bus.js";
import { offer, PAGE_VIEWED, ROAD_WARRIOR, SEGMENT_ASSIGNED } from "./offers.js";

await serve("brand", [{ topic: PAGE_VIEWED }, { topic: SEGMENT_ASSIGNED }], async (message) => {
  const visitor = text(message, "visitor") || text(message, "name");
  if (message.eventType === PAGE_VIEWED) return [offer("brand", visitor, message.eventId, "baseline")];
  if (text(message, "segment") === ROAD_WARRIOR) return [offer("brand", visitor, text(message, "page_view"), ROAD_WARRIOR)];
  return [];
});
