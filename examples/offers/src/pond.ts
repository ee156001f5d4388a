// A service's own small state (its "pond"): a JSON file in OFFERS_STATE_DIR, written
// whole to a temporary file and renamed over the old one, so a crash leaves the old
// state or the new, never half of one. Written before the message that changed it is
// acknowledged: a restart finds what was acknowledged.
import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export class Pond<T> {
  private readonly file: string;
  private entries: Record<string, T & { at: number }>;

  constructor(name: string, private readonly keep = 10_000) {
    const dir = process.env.OFFERS_STATE_DIR ?? ".state";
    mkdirSync(dir, { recursive: true });
    this.file = join(dir, `${name}.json`);
    let text: string | undefined;
    try {
      text = readFileSync(this.file, "utf8");
    } catch {
      text = undefined; // no pond yet
    }
    // a pond that does not parse is a fault to see, not an empty pond to start over with
    this.entries = text === undefined ? {} : JSON.parse(text);
  }

  get(key: string): T | undefined {
    return this.entries[key];
  }

  values(): T[] {
    return Object.values(this.entries);
  }

  find(match: (value: T) => boolean): T | undefined {
    return Object.values(this.entries).find(match);
  }

  /** Sets `key` and writes the pond; the oldest entries go beyond `keep`. */
  set(key: string, value: T): void {
    this.entries[key] = { ...value, at: Date.now() };
    const keys = Object.keys(this.entries);
    if (keys.length > this.keep) {
      keys.sort((a, b) => this.entries[a]!.at - this.entries[b]!.at);
      for (const old of keys.slice(0, keys.length - this.keep)) delete this.entries[old];
    }
    writeFileSync(`${this.file}.tmp`, JSON.stringify(this.entries));
    renameSync(`${this.file}.tmp`, this.file);
  }
}
