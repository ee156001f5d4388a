// The scenario's vocabulary, shared by its services.

/** Events are named `<entity>.<past-tense verb>`; the page view is the platform's topic. */
export const PAGE_VIEWED = "ViewPage";
export const OFFER_PROPOSED = "offer.proposed";
export const SEGMENT_ASSIGNED = "segment.assigned";
export const MEMBERSHIP_RECOGNISED = "membership.recognised";
export const OFFERS_ASSEMBLED = "offers.assembled";

export const ROAD_WARRIOR = "road-warrior";
export const PLATINUM = "platinum";

/** An offer proposed for one visitor's page view. */
export function offer(by: string, visitor: string, pageView: string, name: string) {
  return {
    type: OFFER_PROPOSED,
    partition_key: visitor,
    data: { visitor, page_view: pageView, offer: `${by}:${name}` },
  };
}
