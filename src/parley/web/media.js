// One call's WebRTC in the page: camera and microphone, the peer connection,
// candidates, the handshake certificate and the quality figures.
//
// It decides nothing. The terminal says what to create (media.open) and
// judges what this reports: it signs the DTLS fingerprint it reads from our
// SDP, and checks the certificate the peer presented in the handshake against
// the one the peer signed. Remote media is kept in `remoteStream` and only
// shown once the terminal says the call is active (see app.js).
//
// Every frame sent and received goes through the SFrame layer in the media worker
// (sframe-worker.js, an RTCRtpScriptTransform on each sender and receiver), under
// keys the terminal gives (setKeys); video is VP8 only, the codec whose header bytes
// the layer leaves readable.

const LOST_AFTER_MS = 1000; // disconnected this long (after the browser's own ~5 s): lost

export class CallMedia {
  // open: {call_id, media, ice}; hooks: onCandidate(candidate|null),
  // onConnected(certificates), onFailed(reason), onTrack(), onUnprotected(detail).
  constructor(open, hooks) {
    this.kind = open.media;
    this.ice = open.ice;
    this.certificate = open.certificate || null; // set by the page before open()
    this.attempt = open.attempt ?? 0;
    this.lostTimer = null;
    this.hooks = hooks;
    this.pc = null;
    this.localStream = null;
    this.remoteStream = new MediaStream();
    this.closed = false;
    this.connectedReported = false;
    this.previousSample = null;
    // Peer-connection operations run one after another, in the order the
    // terminal sent them (an answer, then candidates).
    this.queue = Promise.resolve();
    this.layerStats = {};
    this.worker = null;
    if (typeof RTCRtpScriptTransform !== "function") return; // open() refuses the call
    this.worker = new Worker("/static/sframe-worker.js", { type: "module", name: `sframe ${open.call_id}` });
    this.worker.addEventListener("message", (event) => {
      const message = event.data || {};
      if (message.type === "stats") this.layerStats = message.stats;
      else if (message.type === "unprotected" && !this.closed) this.hooks.onUnprotected?.(message.detail);
      else if (message.type === "error" && !this.closed) this.#fail(`the media keys could not be used: ${message.detail}`);
    });
  }

  // Keys for the SFrame layer, as the terminal sends them (media.keys).
  setKeys(send, receive) {
    if (this.worker) this.worker.postMessage({ type: "keys", send: send || null, receive: receive || null });
  }

  // Every sender and receiver through the worker, once; video as VP8 only.
  #attachLayer() {
    for (const transceiver of this.pc.getTransceivers()) {
      const kind = transceiver.receiver.track?.kind ?? transceiver.sender.track?.kind;
      if (kind === "video" && typeof transceiver.setCodecPreferences === "function") {
        const codecs = RTCRtpReceiver.getCapabilities("video").codecs
          .filter((c) => ["video/vp8", "video/rtx"].includes(c.mimeType.toLowerCase()));
        transceiver.setCodecPreferences(codecs);
      }
      if (!transceiver.sender.transform) {
        transceiver.sender.transform = new RTCRtpScriptTransform(this.worker, { side: "send", kind });
      }
      if (!transceiver.receiver.transform) {
        transceiver.receiver.transform = new RTCRtpScriptTransform(this.worker, { side: "receive", kind });
      }
    }
  }

  // Make an offer (offerSdp undefined) or answer one; resolves with our SDP.
  async open(offerSdp) {
    const video = this.kind === "video";
    if (!this.worker) {
      throw new Error("this browser has no encoded transforms (RTCRtpScriptTransform): the call's media cannot be protected end to end");
    }
    try {
      this.localStream = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true },
        video: video ? { width: { ideal: 1280 }, height: { ideal: 720 } } : false,
      });
    } catch (err) {
      throw new Error(`the ${video ? "camera or microphone" : "microphone"} is not available: ${err.name}`);
    }
    if (this.closed) {
      // Hung up while the browser asked for the camera: let go of it at once.
      for (const track of this.localStream.getTracks()) track.stop();
      throw new Error("the call ended");
    }
    // Exactly the configuration the terminal gave: its ICE servers (never a
    // public default) and one transport for all media; and the call's certificate, the
    // same for each peer connection of a call, so that a reconnection keeps its SAS.
    const pc = new RTCPeerConnection(this.certificate ? { ...this.ice, certificates: [this.certificate] } : this.ice);
    this.pc = pc;
    pc.addEventListener("icecandidate", (event) => this.hooks.onCandidate(event.candidate));
    pc.addEventListener("track", (event) => {
      this.remoteStream.addTrack(event.track);
      this.hooks.onTrack();
    });
    pc.addEventListener("connectionstatechange", () => this.#connectionChanged());
    if (offerSdp !== undefined) await pc.setRemoteDescription({ type: "offer", sdp: offerSdp });
    for (const track of this.localStream.getTracks()) pc.addTrack(track, this.localStream);
    this.#attachLayer();
    await pc.setLocalDescription(offerSdp !== undefined ? await pc.createAnswer() : await pc.createOffer());
    return pc.localDescription.sdp;
  }

  applyAnswer(sdp) {
    return this.#enqueue(() => this.pc.setRemoteDescription({ type: "answer", sdp }));
  }

  addRemoteCandidate(candidate, mid, mline) {
    return this.#enqueue(async () => {
      if (!candidate) {
        // End of candidates: a hint only, so a browser that refuses it loses nothing.
        await this.pc.addIceCandidate({ candidate: "", sdpMid: mid, sdpMLineIndex: mline }).catch(() => {});
        return;
      }
      await this.pc.addIceCandidate({ candidate, sdpMid: mid, sdpMLineIndex: mline });
    });
  }

  setLocal(audio, video) {
    if (!this.localStream) return;
    for (const track of this.localStream.getAudioTracks()) track.enabled = audio;
    for (const track of this.localStream.getVideoTracks()) track.enabled = video;
  }

  close() {
    this.closed = true;
    if (this.lostTimer) clearTimeout(this.lostTimer);
    if (this.pc) this.pc.close();
    if (this.worker) this.worker.terminate(); // and the media keys with it
    // Stopping the tracks turns the camera light off.
    if (this.localStream) for (const track of this.localStream.getTracks()) track.stop();
    for (const track of this.remoteStream.getTracks()) track.stop();
  }

  // The certificates the peer presented in the DTLS handshake. First from the DTLS
  // transport itself, hashed here with SubtleCrypto: Chromium's certificate stats are
  // cached at the first getStats() after a negotiation and can miss the peer's
  // certificate for the whole call. getStats is the fallback for browsers without
  // RTCDtlsTransport.getRemoteCertificates().
  async handshakeCertificates() {
    const fromTransport = await this.#transportCertificates();
    if (fromTransport.length > 0) return fromTransport;
    const report = await this.pc.getStats();
    const certificates = [];
    for (const stat of report.values()) {
      if (stat.type !== "transport" || !stat.remoteCertificateId) continue;
      const certificate = report.get(stat.remoteCertificateId);
      if (certificate) {
        certificates.push({ algorithm: certificate.fingerprintAlgorithm, fingerprint: certificate.fingerprint });
      }
    }
    return certificates;
  }

  async #transportCertificates() {
    const transport = this.pc.getSenders().map((s) => s.transport).find(Boolean)
      ?? this.pc.getReceivers().map((r) => r.transport).find(Boolean);
    if (!transport || typeof transport.getRemoteCertificates !== "function" || !crypto.subtle) {
      return [];
    }
    const certificates = [];
    for (const der of transport.getRemoteCertificates()) {
      const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", der));
      const hex = Array.from(digest, (b) => b.toString(16).padStart(2, "0").toUpperCase());
      certificates.push({ algorithm: "sha-256", fingerprint: hex.join(":") });
    }
    return certificates;
  }

  // Quality figures from getStats, as the terminal records them and the page shows them.
  async sample() {
    // Not before the handshake: Chromium caches certificate stats at the first
    // getStats() after a negotiation, and one taken before DTLS is up would
    // hide the peer's certificate (remoteCertificateId) for the whole call.
    if (!this.pc || this.closed || !this.connectedReported) return null;
    const report = await this.pc.getStats();
    const now = performance.now();
    const out = { rtt_ms: null, loss_pct: null, bitrate_in_kbps: null, bitrate_out_kbps: null, audio: {}, video: {} };
    let bytesIn = 0;
    let bytesOut = 0;
    let received = 0;
    let lost = 0;
    for (const stat of report.values()) {
      if (stat.type === "transport" && stat.selectedCandidatePairId) {
        const pair = report.get(stat.selectedCandidatePairId);
        if (pair && pair.currentRoundTripTime !== undefined) out.rtt_ms = round(pair.currentRoundTripTime * 1000);
        const local = pair ? report.get(pair.localCandidateId) : null;
        if (local) out.ice_local = local.candidateType ?? null; // host, srflx, prflx or relay
      } else if (stat.type === "inbound-rtp" && (stat.kind === "audio" || stat.kind === "video")) {
        const kind = out[stat.kind];
        kind.packets_received = stat.packetsReceived ?? 0;
        kind.packets_lost = stat.packetsLost ?? 0;
        kind.jitter_ms = stat.jitter !== undefined ? round(stat.jitter * 1000) : null;
        kind.bytes_received = stat.bytesReceived ?? 0;
        received += kind.packets_received;
        lost += Math.max(0, kind.packets_lost);
        bytesIn += kind.bytes_received;
        if (stat.kind === "video") {
          kind.frames_decoded = stat.framesDecoded ?? 0;
          kind.frame_width = stat.frameWidth ?? null;
          kind.frame_height = stat.frameHeight ?? null;
          kind.fps = stat.framesPerSecond ?? null;
        } else {
          kind.samples_received = stat.totalSamplesReceived ?? 0;
          kind.concealed_samples = stat.concealedSamples ?? 0;
          kind.audio_level = stat.audioLevel ?? null;
        }
      } else if (stat.type === "outbound-rtp") {
        bytesOut += stat.bytesSent ?? 0;
      }
    }
    for (const kind of ["audio", "video"]) Object.assign(out[kind], this.layerStats[kind] || {});
    if (received + lost > 0) out.loss_pct = round((100 * lost) / (received + lost));
    const previous = this.previousSample;
    if (previous && now > previous.time) {
      const seconds = (now - previous.time) / 1000;
      out.bitrate_in_kbps = round(((bytesIn - previous.bytesIn) * 8) / 1000 / seconds);
      out.bitrate_out_kbps = round(((bytesOut - previous.bytesOut) * 8) / 1000 / seconds);
    }
    this.previousSample = { time: now, bytesIn, bytesOut };
    return out;
  }

  #enqueue(operation) {
    const next = this.queue.then(() => (this.closed || !this.pc ? undefined : operation()));
    // A failed step is reported, and does not stop the ones after it.
    this.queue = next.catch((err) => this.#fail(`the browser refused a step of the call setup: ${err.message}`));
    return this.queue;
  }

  async #connectionChanged() {
    try {
      await this.#reportConnection();
    } catch (err) {
      this.#fail(`the peer certificate could not be read: ${err.message}`);
    }
  }

  async #reportConnection() {
    if (this.closed) return;
    const state = this.pc.connectionState;
    if (state === "connected" && !this.connectedReported) {
      this.connectedReported = true;
      let certificates = await this.handshakeCertificates();
      // The certificate stats can trail the state change by a moment.
      for (let tries = 0; certificates.length === 0 && tries < 30 && !this.closed; tries += 1) {
        await new Promise((resolve) => setTimeout(resolve, 100));
        certificates = await this.handshakeCertificates();
      }
      if (this.closed) return;
      if (certificates.length === 0) {
        this.#fail(`connected, but the browser reports no peer certificate (${await this.#transportStates()})`);
        return;
      }
      this.hooks.onConnected(certificates);
    } else if (state === "failed") {
      this.#fail("the media connection failed (ICE or DTLS)");
    } else if (state === "disconnected" && !this.lostTimer) {
      // No packets for a while (Chromium says so after about 5 s): lost, unless it comes
      // back at once. The terminal then reconnects the call with a new peer connection.
      this.lostTimer = setTimeout(() => {
        this.lostTimer = null;
        if (!this.closed && this.pc.connectionState === "disconnected") {
          this.#fail(`no media from the peer for ${LOST_AFTER_MS / 1000 + 5} s`);
        }
      }, LOST_AFTER_MS);
    }
  }

  async #transportStates() {
    const states = [];
    for (const stat of (await this.pc.getStats()).values()) {
      if (stat.type === "transport") states.push(`transport ${stat.id}: dtls ${stat.dtlsState}, ice ${stat.iceState}`);
    }
    return states.join("; ") || "no transport";
  }

  #fail(reason) {
    if (!this.closed) this.hooks.onFailed(reason);
  }
}

function round(value) {
  return Math.round(value * 10) / 10;
}
