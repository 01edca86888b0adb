// Keyboard shortcuts of the rating page: each button names its key (data-key); typing in a field is left alone.
document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const target = event.target;
  if (target instanceof HTMLElement && target.closest("input, textarea, select")) return;
  const button = document.querySelector(`form.rate button[data-key="${CSS.escape(event.key)}"]`);
  if (button) {
    event.preventDefault();
    button.click();
  }
});

// Playground: the answer streams in (server-sent events over a POST) instead of arriving with a new page.
// Text only (textContent): a model's answer never becomes markup. A refused request falls back to the plain
// form post, whose page says why.
document.addEventListener("submit", async (event) => {
  const form = event.target;
  if (!(form instanceof HTMLFormElement) || !form.dataset.stream || form.dataset.sent) return;
  event.preventDefault();
  const box = document.getElementById("answer-box");
  const answer = document.getElementById("answer");
  const info = document.getElementById("answer-info");
  const button = form.querySelector("button[type=submit]");
  let response;
  try {
    response = await fetch(form.dataset.stream, { method: "POST", body: new URLSearchParams(new FormData(form)) });
  } catch (err) {
    response = null;
  }
  if (!response || !response.ok || !response.body) {
    form.dataset.sent = "1";
    form.submit();
    return;
  }
  answer.textContent = "";
  info.textContent = "answering…";
  box.hidden = false;
  if (button) button.disabled = true;
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const kind = (block.match(/^event: (.*)$/m) || [])[1];
      const data = JSON.parse((block.match(/^data: (.*)$/m) || [])[1] || "{}");
      if (kind === "delta") answer.textContent += data.text;
      if (kind === "done") {
        info.textContent = `${data.completion_tokens} tokens after a ${data.prompt_tokens}-token prompt; stopped by ${data.finish_reason}. The serving engine's answer, as tuneforge serve would give it (streamed).`;
      }
      if (kind === "error") info.textContent = `stopped: ${data.message}`;
    }
  }
  if (button) button.disabled = false;
});
