// SFrame (RFC 9605) for the page: the same layer as core/sframe.py, with WebCrypto.
//
// Every encoded frame the page sends is sealed here (in the media worker,
// sframe-worker.js) before the browser packetizes it, and every frame it
// receives is opened before it is decoded; DTLS-SRTP stays the outer layer.
// The terminal derives the base keys from the secrets in the call's sealed
// envelopes and gives them to the page (media.keys); this file only does
// RFC 9605: the header, derive_key_salt, AES_128_GCM_SHA256_128, plus the
// counters and the replay window. The format, the readable bytes and the key
// ids are those of core/sframe.py (its docstring says why), and both pass the
// RFC's test vectors (tests/core/test_sframe.py, tests/integration/test_browser_sframe.py).

export const CIPHER_SUITE = 0x0004;
const TAG_BYTES = 16;
const REPLAY_WINDOW = 128n;
const KEYS_KEPT = 2;
const MAX_VALUE = (1n << 64n) - 1n;
const encoder = new TextEncoder();

export class SFrameError extends Error {}

function compact(value) {
  const bytes = [];
  let v = value;
  do {
    bytes.unshift(Number(v & 0xffn));
    v >>= 8n;
  } while (v > 0n);
  return bytes;
}

// The SFrame header for kid and ctr (Numbers or BigInts).
export function encodeHeader(kid, ctr) {
  const k = BigInt(kid);
  const c = BigInt(ctr);
  if (k < 0n || c < 0n || k > MAX_VALUE || c > MAX_VALUE) throw new SFrameError("SFrame KID and CTR must fit in 64 bits");
  let config = 0;
  const tail = [];
  if (k < 8n) config |= Number(k) << 4;
  else {
    const bytes = compact(k);
    config |= 0x80 | ((bytes.length - 1) << 4);
    tail.push(...bytes);
  }
  if (c < 8n) config |= Number(c);
  else {
    const bytes = compact(c);
    config |= 0x08 | (bytes.length - 1);
    tail.push(...bytes);
  }
  return Uint8Array.from([config, ...tail]);
}

// {kid, ctr, size} (BigInts and a Number) of the header at the start of data.
export function decodeHeader(data) {
  if (data.length === 0) throw new SFrameError("no SFrame header (empty frame)");
  const config = data[0];
  let pos = 1;
  const values = [];
  for (const [extended, small] of [[config & 0x80, (config >> 4) & 0x07], [config & 0x08, config & 0x07]]) {
    if (!extended) {
      values.push(BigInt(small));
      continue;
    }
    const size = small + 1;
    if (pos + size > data.length) throw new SFrameError("SFrame header cut short");
    if (size > 1 && data[pos] === 0) throw new SFrameError("SFrame header value not minimally encoded");
    let value = 0n;
    for (let i = 0; i < size; i += 1) value = (value << 8n) | BigInt(data[pos + i]);
    if (value < 8n) throw new SFrameError("SFrame header value not minimally encoded");
    values.push(value);
    pos += size;
  }
  return { kid: values[0], ctr: values[1], size: pos };
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

function label(name, kid) {
  const suffix = new Uint8Array(10);
  const view = new DataView(suffix.buffer);
  view.setBigUint64(0, BigInt(kid));
  view.setUint16(8, CIPHER_SUITE);
  return concat(encoder.encode(`SFrame 1.0 Secret ${name} `), suffix);
}

// RFC 9605, section 4.4.2: {key, salt} (bytes) for kid from baseKey (bytes).
export async function deriveKeySalt(kid, baseKey) {
  const ikm = await crypto.subtle.importKey("raw", baseKey, "HKDF", false, ["deriveBits"]);
  const expand = async (name, bits) => new Uint8Array(await crypto.subtle.deriveBits(
    { name: "HKDF", hash: "SHA-256", salt: new Uint8Array(0), info: label(name, kid) }, ikm, bits));
  return { key: await expand("key", 128), salt: await expand("salt", 96) };
}

function nonce(salt, ctr) {
  const out = Uint8Array.from(salt);
  let c = BigInt(ctr);
  for (let i = out.length - 1; i >= 0 && c > 0n; i -= 1) {
    out[i] ^= Number(c & 0xffn);
    c >>= 8n;
  }
  return out;
}

// RFC 9605's SFrame context: keys by KID; encrypt and decrypt.
export class Context {
  constructor() {
    this.keys = new Map(); // kid (BigInt) -> {aead, salt}
  }

  async addKey(kid, baseKey) {
    const { key, salt } = await deriveKeySalt(kid, baseKey);
    const aead = await crypto.subtle.importKey("raw", key, "AES-GCM", false, ["encrypt", "decrypt"]);
    this.keys.set(BigInt(kid), { aead, salt });
  }

  removeKey(kid) {
    this.keys.delete(BigInt(kid));
  }

  async encrypt(ctr, kid, metadata, plaintext) {
    const entry = this.keys.get(BigInt(kid));
    if (!entry) throw new SFrameError(`no key for SFrame KID ${kid}`);
    const header = encodeHeader(kid, ctr);
    const sealed = await crypto.subtle.encrypt(
      { name: "AES-GCM", iv: nonce(entry.salt, ctr), additionalData: concat(header, metadata), tagLength: 128 },
      entry.aead, plaintext);
    return concat(header, new Uint8Array(sealed));
  }

  async decrypt(metadata, ciphertext) {
    const { kid, ctr, size } = decodeHeader(ciphertext);
    const entry = this.keys.get(kid);
    if (!entry) throw new SFrameError(`no key for SFrame KID ${kid}`);
    if (ciphertext.length - size < TAG_BYTES) throw new SFrameError("SFrame ciphertext shorter than its tag");
    try {
      const plain = await crypto.subtle.decrypt(
        { name: "AES-GCM", iv: nonce(entry.salt, ctr), additionalData: concat(ciphertext.subarray(0, size), metadata), tagLength: 128 },
        entry.aead, ciphertext.subarray(size));
      return { kid, ctr, plaintext: new Uint8Array(plain) };
    } catch {
      throw new SFrameError("SFrame frame does not authenticate");
    }
  }
}

// --- Parley's use of it (core/sframe.py) ------------------------------------------

const KIND_BIT = { audio: 0n, video: 1n };

export function mediaKid(epoch, kind) {
  return 2n * BigInt(epoch) + KIND_BIT[kind];
}

// Read off the first byte, which stays readable: sender and receiver count the same.
export function clearBytes(kind, frame) {
  if (kind === "audio" || frame.length === 0) return 1; // the Opus TOC byte
  const keyframe = (frame[0] & 0x01) === 0; // VP8 frame tag: P bit 0 is a key frame
  return keyframe ? 10 : 3;
}

function hexBytes(hex) {
  if (typeof hex !== "string" || !/^([0-9a-f]{2}){16}$/.test(hex)) throw new SFrameError("a base key is 16 bytes of hex");
  return Uint8Array.from(hex.match(/../g), (b) => parseInt(b, 16));
}

// One outgoing stream: seals each frame under the current key; the counter runs on.
export class FrameSealer {
  constructor(kind) {
    this.kind = kind;
    this.context = new Context();
    this.kid = null;
    this.counter = 0n;
    this.sealed = 0;
  }

  // keys: {epoch, audio, video} as media.keys gives them (hex base keys).
  async use(keys) {
    const kid = mediaKid(keys.epoch, this.kind);
    if (this.kid !== null && kid <= this.kid) return;
    await this.context.addKey(kid, hexBytes(keys[this.kind]));
    if (this.kid !== null && kid <= this.kid) return; // a later one came meanwhile
    if (this.kid !== null) this.context.removeKey(this.kid);
    this.kid = kid;
  }

  async seal(frame) {
    if (this.kid === null) throw new SFrameError("no media key to seal with yet");
    const clear = clearBytes(this.kind, frame);
    if (frame.length < clear) throw new SFrameError(`a ${this.kind} frame of ${frame.length} bytes is too short to seal`);
    const metadata = frame.slice(0, clear);
    const ctr = this.counter;
    this.counter += 1n;
    const out = concat(metadata, await this.context.encrypt(ctr, this.kid, metadata, frame.subarray(clear)));
    this.sealed += 1;
    return out;
  }

  erase() {
    this.context.keys.clear();
    this.kid = null;
  }
}

class ReplayWindow {
  constructor() {
    this.top = -1n;
    this.bits = 0n;
  }

  check(ctr) {
    if (ctr > this.top) return true;
    const offset = this.top - ctr;
    return offset < REPLAY_WINDOW && ((this.bits >> offset) & 1n) === 0n;
  }

  mark(ctr) {
    if (ctr > this.top) {
      const shift = ctr - this.top;
      this.bits = shift < REPLAY_WINDOW ? ((this.bits << shift) | 1n) & ((1n << REPLAY_WINDOW) - 1n) : 1n;
      this.top = ctr;
    } else {
      this.bits |= 1n << (this.top - ctr);
    }
  }
}

// One incoming stream: opens frames sealed under the keys the verified peer sent.
export class FrameOpener {
  constructor(kind) {
    this.kind = kind;
    this.context = new Context();
    this.windows = new Map(); // kid -> ReplayWindow
    this.stats = { opened: 0, dropped: {}, consecutive: 0, last: null };
  }

  async add(keys) {
    const kid = mediaKid(keys.epoch, this.kind);
    if (this.windows.has(kid)) return;
    await this.context.addKey(kid, hexBytes(keys[this.kind]));
    this.windows.set(kid, new ReplayWindow());
    const kids = [...this.windows.keys()].sort((a, b) => (a < b ? -1 : 1));
    for (const old of kids.slice(0, Math.max(0, kids.length - KEYS_KEPT))) {
      this.context.removeKey(old);
      this.windows.delete(old);
    }
  }

  #drop(why) {
    this.stats.dropped[why] = (this.stats.dropped[why] || 0) + 1;
    this.stats.consecutive += 1;
    this.stats.last = why;
    return new SFrameError(`${this.kind} frame dropped: ${why}`);
  }

  async open(frame) {
    const clear = clearBytes(this.kind, frame);
    if (frame.length < clear + 1 + TAG_BYTES) throw this.#drop("malformed");
    const metadata = frame.slice(0, clear);
    const body = frame.subarray(clear);
    let header;
    try {
      header = decodeHeader(body);
    } catch {
      throw this.#drop("malformed");
    }
    if ((header.kid & 1n) !== KIND_BIT[this.kind]) throw this.#drop("wrong_stream");
    const window = this.windows.get(header.kid);
    if (!window) throw this.#drop("unknown_key");
    if (!window.check(header.ctr)) throw this.#drop("replay");
    let opened;
    try {
      opened = await this.context.decrypt(metadata, body);
    } catch {
      throw this.#drop("auth");
    }
    window.mark(header.ctr);
    this.stats.opened += 1;
    this.stats.consecutive = 0;
    return concat(metadata, opened.plaintext);
  }

  erase() {
    this.context.keys.clear();
    this.windows.clear();
  }
}

// RFC 9605's test vectors, as tests/core/data/rfc9605.json holds them: what fails.
export async function checkVectors(vectors) {
  const failures = [];
  const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  const bytes = (h) => Uint8Array.from(h.match(/../g) || [], (b) => parseInt(b, 16));
  for (const v of vectors.header) {
    const kid = BigInt(v.kid_hex ?? v.kid);
    const ctr = BigInt(v.ctr_hex ?? v.ctr);
    if (hex(encodeHeader(kid, ctr)) !== v.encoded) failures.push(`encode ${v.encoded}`);
    const back = decodeHeader(bytes(v.encoded));
    if (back.kid !== kid || back.ctr !== ctr || back.size !== v.encoded.length / 2) failures.push(`decode ${v.encoded}`);
  }
  for (const v of vectors.sframe) {
    const base = bytes(v.base_key);
    const { key, salt } = await deriveKeySalt(v.kid, base);
    if (hex(key) !== v.sframe_key || hex(salt) !== v.sframe_salt) failures.push(`derive ${v.kid}`);
    const context = new Context();
    await context.addKey(v.kid, base);
    const ct = await context.encrypt(v.ctr, v.kid, bytes(v.metadata), bytes(v.pt));
    if (hex(ct) !== v.ct) failures.push(`encrypt ${v.kid}/${v.ctr}`);
    try {
      const opened = await context.decrypt(bytes(v.metadata), bytes(v.ct));
      if (hex(opened.plaintext) !== v.pt) failures.push(`decrypt ${v.kid}/${v.ctr}`);
    } catch (err) {
      failures.push(`decrypt ${v.kid}/${v.ctr}: ${err.message}`);
    }
    const flipped = bytes(v.ct);
    flipped[flipped.length - 1] ^= 1;
    try {
      await context.decrypt(bytes(v.metadata), flipped);
      failures.push("a flipped tag opened");
    } catch (err) {
      if (!(err instanceof SFrameError)) throw err;
    }
  }
  return failures;
}
