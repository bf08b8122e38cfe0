// The live token count under the prompt boxes: "54/75 · 2 chunks" is the last chunk's tokens of its 75
// and how many 77-token chunks the text encoder gets (A1111's rules: weights, BREAK, embeddings'
// vectors, the comma backtrack). The worker asks Python's chunker (sdweb.browser.count_json), after
// the typing has paused, so the count is the one the run will use.

const $ = (id) => document.getElementById(id);
const FIELDS = { prompt: "prompt-count", negative_prompt: "negative-prompt-count" };
const PAUSE_MS = 250;

export class TokenCount {
  // send(message): to the worker; job(): {request, endpoint, token, tokenEndpoint} of the form as it is now
  constructor({ send, job }) {
    this.send = send;
    this.job = job;
    this.rid = 0;
    this.timer = null;
    for (const id of ["prompt", "negative-prompt"]) $(id).addEventListener("input", () => this.soon());
  }

  soon() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.now(), PAUSE_MS);
  }

  now() {
    const { request, endpoint, token, tokenEndpoint } = this.job();
    this.rid += 1;
    if (!request.prompt && !request.negative_prompt) return this.show({ rid: this.rid });  // nothing to count
    this.send({ type: "count", rid: this.rid, endpoint, token, tokenEndpoint, request: {
      model: request.model, variant: request.variant, prompt: request.prompt,
      negative_prompt: request.negative_prompt, embeddings: request.embeddings } });
  }

  show(m) {
    if (m.rid !== this.rid) return;  // an answer to text typed since
    for (const [field, id] of Object.entries(FIELDS)) {
      const c = m[field];
      const el = $(id);
      el.textContent = m.error || !c ? "" : `${c.tokens}/75 · ${c.chunks} chunk${c.chunks === 1 ? "" : "s"}`;
      el.title = m.error ? m.message : c ? `${c.count} tokens in all (A1111's count)` : "";
    }
  }
}
