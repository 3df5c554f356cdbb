// The ring of an incoming call, synthesized: no audio file to ship or fetch.
// A browser may keep the sound off until the person has touched the page
// (autoplay rules); the ringing dialog is there either way.

export class Ringer {
  constructor() {
    this.context = null;
    this.timer = null;
    this.gain = null; // the burst now sounding
  }

  start() {
    if (this.timer !== null) return;
    try {
      this.context = this.context || new AudioContext();
    } catch {
      return;
    }
    const burst = () => {
      const ctx = this.context;
      if (ctx.state === "suspended") ctx.resume().catch(() => {});
      const gain = ctx.createGain();
      gain.gain.value = 0.08;
      gain.connect(ctx.destination);
      this.gain = gain;
      // Two seconds of 440 + 480 Hz, then four of silence: a telephone's ring.
      for (const frequency of [440, 480]) {
        const oscillator = ctx.createOscillator();
        oscillator.frequency.value = frequency;
        oscillator.connect(gain);
        oscillator.start();
        oscillator.stop(ctx.currentTime + 2);
      }
    };
    burst();
    this.timer = setInterval(burst, 6000);
  }

  stop() {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    // Silence the burst that is sounding too: no ring over an answered call.
    if (this.gain) this.gain.disconnect();
    this.gain = null;
  }
}
