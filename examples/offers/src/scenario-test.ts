// The scenario end to end (run by examples/offers/test, itself run by scripts/test):
// starts the five services, sends Sally's page view and checks the one assembled
// event; sends two visitors' page views at once and checks that their offers do not
// mix; kills the offer engine mid-scenario, starts it again and checks that nothing
// was lost or doubled. Needs BUS_URL and the tokens the test script mints.
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { strict as assert } from "node:assert";
import { ack, type Bus, type BusMessage, bus, receive, subscribe } from "./bus.js";
import { OFFER_PROPOSED, OFFERS_ASSEMBLED, PAGE_VIEWED } from "./offers.js";

const SERVICES = ["location", "brand", "segmentation", "membership", "offer-engine"] as const;
type Service = (typeof SERVICES)[number];
const token = (who: string) => {
  const value = process.env[`TOKEN_${who.toUpperCase().replace("-", "_")}`];
  if (!value) throw new Error(`TOKEN_${who.toUpperCase().replace("-", "_")} must be set`);
  return value;
};
const WAIT_MS = 30_000;
const SALLY = [
  "brand:baseline",
  "brand:road-warrior",
  "location:baseline",
  "location:road-warrior",
  "location:road-warrior+platinum",
];
const BOB = ["brand:baseline", "brand:road-warrior", "location:baseline", "location:road-warrior"];

/** How many topics each service subscribes its river to. */
const TOPICS: Record<Service, number> = { location: 3, brand: 2, segmentation: 1, membership: 1, "offer-engine": 3 };

/** One value from the test's database (psql; PSQL and DATABASE_URL from the test script). */
function sql(query: string): string {
  const psql = process.env.PSQL ?? "psql";
  return execFileSync(psql, [process.env.DATABASE_URL ?? "", "-v", "ON_ERROR_STOP=1", "-qtA", "-c", query], {
    encoding: "utf8",
  }).trim();
}

const running = new Map<Service, ChildProcess>();
// stopped from outside (the test script's cleanup): the services go too
for (const signal of ["SIGTERM", "SIGINT"] as const) {
  process.on(signal, () => {
    for (const child of running.values()) child.kill("SIGTERM");
    process.exit(1);
  });
}
function start(service: Service): void {
  const child = spawn(process.execPath, ["--import", "tsx", `src/${service}.ts`], {
    env: { ...process.env, BUS_TOKEN: token(service) },
    stdio: ["ignore", "inherit", "inherit"],
  });
  running.set(service, child);
}
async function stop(service: Service, signal: NodeJS.Signals): Promise<void> {
  const child = running.get(service);
  if (!child || child.exitCode !== null) return;
  const exited = new Promise((resolve) => child.once("exit", resolve));
  child.kill(signal);
  await exited;
  running.delete(service);
}

async function until<T>(what: string, check: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`waited ${WAIT_MS} ms in vain for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

const staff = bus(token("staff"));
const web = bus(token("web"));
const watcher = bus(token("watch"));

/** The stored events of a type (the bus's log, for staff). */
async function stored(type: string): Promise<{ event_id: string; data: Record<string, unknown> }[]> {
  const { data, error } = await staff.GET("/events", { params: { query: { type, limit: 1000 } } });
  if (error) throw new Error(`GET /events: ${JSON.stringify(error)}`);
  return data.items.map((e) => ({ event_id: e.event_id, data: e.data as Record<string, unknown> }));
}

/** What a watching river received, kept across waits. */
const seen = new Map<string, BusMessage[]>();
async function watch(river: string, what: string, wanted: (m: BusMessage) => boolean): Promise<BusMessage> {
  return until(what, async () => {
    const received = await receive(watcher, river, 30_000, 500);
    await ack(watcher, river, received.map((r) => r.receipt));
    const all = seen.get(river) ?? [];
    all.push(...received.map((r) => r.message));
    seen.set(river, all);
    return all.find(wanted);
  });
}
const viewed = (pageView: string) => (m: BusMessage) => (m.payload.page_views as string[]).includes(pageView);

async function view(client: Bus, name: string): Promise<string> {
  const { data, error } = await client.POST("/events", {
    body: { type: PAGE_VIEWED, source: "TheSource", data: { name }, partition_key: name },
  });
  if (error) throw new Error(`page view: ${JSON.stringify(error)}`);
  return data.event_id;
}

function assembledFor(message: BusMessage, visitor: string, pageView: string, offers: string[], vip: boolean): void {
  assert.equal(message.eventType, OFFERS_ASSEMBLED);
  assert.equal(message.payload.visitor, visitor);
  assert.deepEqual(message.payload.page_views, [pageView]);
  assert.deepEqual(message.payload.offers, offers, `${visitor}'s offers, each once`);
  assert.equal(message.tags?.segment, "road-warrior");
  assert.equal(message.tags?.vip, vip ? "true" : undefined);
}

try {
  await subscribe(watcher, "offers-watch", [{ topic: OFFERS_ASSEMBLED }]);
  await subscribe(watcher, "vip-offers", [{ topic: OFFERS_ASSEMBLED, tags: ["vip"] }]);
  for (const service of SERVICES) start(service);
  // each has subscribed its river to every topic it reads
  for (const river of SERVICES) {
    await until(`${river} to subscribe`, async () => {
      const { data } = await staff.GET("/rivers/{river}/subscriptions", { params: { path: { river } } });
      return data && data.topics.length === TOPICS[river] ? true : undefined;
    });
  }

  // 1. Sally's page view: one assembled event with the baseline offers, the Road
  //    Warrior offers and the Road-Warrior-and-Platinum offer, each once; VIP-tagged
  const first = await view(web, "Sally");
  assembledFor(await watch("offers-watch", "Sally's offers", viewed(first)), "Sally", first, SALLY, true);
  assembledFor(await watch("vip-offers", "Sally's offers among the VIPs'", viewed(first)), "Sally", first, SALLY, true);
  console.log("1. Sally's page view: one assembled event, every offer once");

  // 2. two visitors at once: their offers do not mix; only Sally's reach the VIP river
  const [sally, bob] = await Promise.all([view(web, "Sally"), view(web, "Bob")]);
  assembledFor(await watch("offers-watch", "Sally's second offers", viewed(sally)), "Sally", sally, SALLY, true);
  assembledFor(await watch("offers-watch", "Bob's offers", viewed(bob)), "Bob", bob, BOB, false);
  await watch("vip-offers", "Sally's second offers among the VIPs'", viewed(sally));
  assert.ok(
    (seen.get("vip-offers") ?? []).every((m) => m.payload.visitor === "Sally"),
    "only VIPs' offers on the VIP river",
  );
  console.log("2. two visitors at once: their offers do not mix");

  // 3. the offer engine killed mid-scenario, holding a message it received and did not
  //    acknowledge: its river keeps the messages (the held one comes back), and once it
  //    runs again one assembled event has them all
  const third = await view(web, "Sally");
  const proposedFor = async (n: number) => {
    const offers = (await stored(OFFER_PROPOSED)).filter((e) => e.data.page_view === third);
    return offers.length >= n ? offers : undefined;
  };
  await until("the offer engine to hold a message of the third page view", async () => {
    const held = sql(
      `select count(*) from rapids.river_messages where river = 'offer-engine' and receive_count >= 1
         and acked_at is null and message -> 'payload' ->> 'page_view' = '${third}'`,
    );
    return Number(held) > 0 ? true : undefined;
  });
  await stop("offer-engine", "SIGKILL");
  await until("every offer for the third page view", () => proposedFor(SALLY.length));
  start("offer-engine");
  assembledFor(await watch("offers-watch", "the offers gathered again", viewed(third)), "Sally", third, SALLY, true);
  // a later page view's offers arrive after it: nothing more of the third came, and the
  // store holds each assembled event once
  const last = await view(web, "Bob");
  await watch("offers-watch", "Bob's last offers", viewed(last));
  const got = (seen.get("offers-watch") ?? []).map((m) => (m.payload.page_views as string[]).join());
  assert.deepEqual(got.sort(), [first, sally, bob, third, last].sort(), "each page view's offers assembled once");
  const assembled = await stored(OFFERS_ASSEMBLED);
  assert.equal(assembled.length, 5, "one assembled event per page view");
  assert.equal(assembled.filter((e) => (e.data.page_views as string[]).includes(third)).length, 1);
  console.log("3. the offer engine killed and started again: nothing lost, nothing doubled");
} finally {
  for (const service of [...running.keys()]) await stop(service, "SIGTERM");
}
