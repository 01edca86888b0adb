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

// Playground: each side's answer streams in (server-sent events over a POST) instead of arriving with a new
// page; both sides at once. Text only (textContent): a model's answer never becomes markup. A refused request
// falls back to the plain form post, whose page says why.
async function streamSide(form, box) {
  const body = new URLSearchParams(new FormData(form));
  body.set("target", box.dataset.target);
  let response;
  try {
    response = await fetch(form.dataset.stream, { method: "POST", body });
  } catch (err) {
    response = null;
  }
  if (!response || !response.ok || !response.body) return false;
  const text = box.querySelector(".answer-text");
  const info = box.querySelector(".answer-info");
  const rating = box.querySelector("form.rating");
  info.textContent = "answering…";
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
      if (kind === "start") {
        rating.elements.request_id.value = data.id;
        box.querySelector("h3").textContent = data.label;
      }
      if (kind === "delta") text.textContent += data.text;
      if (kind === "done") {
        info.textContent = `${data.completion_tokens} tokens after a ${data.prompt_tokens}-token prompt; stopped by ${data.finish_reason} (streamed).`;
        rating.hidden = false;
      }
      if (kind === "error") info.textContent = `stopped: ${data.message}`;
    }
  }
  return true;
}

document.addEventListener("submit", async (event) => {
  const form = event.target;
  if (!(form instanceof HTMLFormElement) || !form.dataset.stream || form.dataset.sent) return;
  event.preventDefault();
  const answers = document.getElementById("answers");
  const template = document.getElementById("answer-template");
  const button = form.querySelector("button[type=submit]");
  const other = form.elements.other;
  const sides = [[form.elements.path.value, form.elements.path.value]];
  if (other && other.value) sides.push([other.value, other.selectedOptions[0].textContent]);
  answers.replaceChildren();
  answers.classList.toggle("one", sides.length < 2);
  const boxes = sides.map(([target, label]) => {
    const box = template.content.firstElementChild.cloneNode(true);
    box.dataset.target = target;
    box.querySelector("h3").textContent = label;
    answers.append(box);
    return box;
  });
  if (button) button.disabled = true;
  const streamed = await Promise.all(boxes.map((box) => streamSide(form, box)));
  if (button) button.disabled = false;
  if (!streamed.every(Boolean)) {
    form.dataset.sent = "1";
    form.submit();
  }
});

// A rating is saved on the click (into the serving stage's feedback table); the page stays as it is.
document.addEventListener("submit", async (event) => {
  const form = event.target;
  if (!(form instanceof HTMLFormElement) || !form.classList.contains("rating")) return;
  event.preventDefault();
  const status = form.querySelector(".rated");
  const body = new URLSearchParams(new FormData(form, event.submitter));
  status.textContent = "saving…";
  try {
    const response = await fetch(form.action, { method: "POST", body, headers: { Accept: "application/json" } });
    const data = await response.json().catch(() => ({ error: `refused (HTTP ${response.status})` }));
    status.textContent = data.error ? `not saved: ${data.error}` : `saved: ${data.saved}${data.corrected ? ", with the correction" : ""}`;
    form.querySelectorAll("button").forEach((b) => b.classList.toggle("chosen", !data.error && b === event.submitter));
  } catch (err) {
    status.textContent = "not saved: the UI cannot be reached";
  }
});
