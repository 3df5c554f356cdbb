// The page's media worker: the SFrame layer on every encoded frame of one call.
//
// media.js attaches an RTCRtpScriptTransform to each sender ({side: "send"})
// and receiver ({side: "receive"}) of the call's peer connection, all in this
// worker. Sent frames are sealed (a frame before the first key is not sent at
// all); received frames are opened, and one that does not open is dropped,
// never decoded. The page posts {type: "keys", send?, receive?} as the
// terminal gives them (media.keys); the worker posts {type: "stats"} four
// times a second and {type: "unprotected", detail} once, when a stream's frames keep
// failing (DROPS_ALARM in a row, as robot media does).

import { FrameOpener, FrameSealer } from "./sframe.js";

const DROPS_ALARM = 25;
const sealers = { audio: new FrameSealer("audio"), video: new FrameSealer("video") };
const openers = { audio: new FrameOpener("audio"), video: new FrameOpener("video") };
let alarmed = false;
let keysApplied = Promise.resolve();

self.onmessage = (event) => {
  const message = event.data || {};
  if (message.type !== "keys") return;
  // In order: a frame waits for the keys that were given before it.
  keysApplied = keysApplied.then(async () => {
    for (const kind of ["audio", "video"]) {
      if (message.send) await sealers[kind].use(message.send);
      if (message.receive) await openers[kind].add(message.receive);
    }
  }).catch((err) => self.postMessage({ type: "error", detail: String(err.message || err) }));
};

function report() {
  const stats = {};
  for (const kind of ["audio", "video"]) {
    const s = openers[kind].stats;
    stats[kind] = {
      sframe_sealed: sealers[kind].sealed,
      sframe_opened: s.opened,
      sframe_dropped: Object.values(s.dropped).reduce((a, b) => a + b, 0),
      sframe_last_drop: s.last,
      sframe_drops: Object.entries(s.dropped).map(([why, n]) => `${why}:${n}`).join(" ").slice(0, 64),
    };
    if (!alarmed && s.consecutive >= DROPS_ALARM) {
      alarmed = true;
      self.postMessage({ type: "unprotected", detail: `${s.consecutive} ${kind} frames in a row: ${s.last}` });
    }
  }
  self.postMessage({ type: "stats", stats });
}
setInterval(report, 250);

self.onrtctransform = (event) => {
  const { readable, writable, options } = event.transformer;
  const kind = options.kind === "video" ? "video" : "audio";
  const send = options.side === "send";
  const transform = new TransformStream({
    async transform(frame, controller) {
      await keysApplied;
      const data = new Uint8Array(frame.data);
      try {
        const out = send ? await sealers[kind].seal(data) : await openers[kind].open(data);
        frame.data = out.buffer;
        controller.enqueue(frame);
      } catch {
        // Not sent (no key yet), or dropped and counted (receive side).
      }
    },
  });
  readable.pipeThrough(transform).pipeTo(writable).catch(() => {});
};
