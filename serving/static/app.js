// The draw-a-digit page. Sends the drawing (a PNG of the pad) or an uploaded file to the
// service's POST /predict_image and shows the label, the ten probabilities and the 28x28
// image the model saw; shows the model's version and test accuracy from POST /model_info.
// "Wrong? It was a _" sends that 28x28 image and the right digit to POST /feedback.
// Plain JavaScript, no build step, nothing fetched from anywhere but the service itself.
"use strict";

const PEN_WIDTH = 18; // pad pixels (the pad is 280x280): about MNIST's stroke for a digit this big
const THROTTLE_MS = 150; // while a stroke goes on, predict at most this often
const RETRY_MS = 5000; // ask for /model_info again after a failure

const $ = (id) => document.getElementById(id);
const pad = $("pad");
const pen = pad.getContext("2d");
const seen = $("seen").getContext("2d");
const result = $("result");
const errorBox = $("error");

const bars = Array.from({ length: 10 }, (_, digit) => {
  const row = document.createElement("li");
  row.innerHTML = `<span class="digit">${digit}</span><span class="track"><span class="fill">` +
    `</span></span><span class="pct">0.0 %</span>`;
  $("bars").append(row);
  return { row, fill: row.querySelector(".fill"), pct: row.querySelector(".pct") };
});

// Everything the page remembers between events, in one place.
const state = {
  ink: false, // something drawn since the pad was last cleared
  stroke: null, // {id, x, y}: the pointer drawing now and its last point
  generation: 0, // bumped by Clear, an upload or a fresh drawing: older answers are dropped
  outstanding: 0, // requests to /predict_image not answered yet
  drawingSent: false, // a PNG of the pad is on its way
  sendAgain: false, // the pad changed while it was
  timer: null, // throttled prediction during a stroke
  seen: null, // the 28x28 grey levels of the answer shown, for a correction
};

// ----- errors and the answer --------------------------------------------------------------

function showError(message, origin = "predict") {
  errorBox.textContent = message;
  errorBox.hidden = !message;
  errorBox.dataset.origin = origin;
}

function clearError(origin) {
  if (errorBox.dataset.origin === origin) showError("", origin);
}

async function reason(response) {
  // The service answers errors with {"error": ..., "detail": [{"msg": ...}]}; proxies may not.
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    return body.detail?.[0]?.msg ?? body.error ?? text;
  } catch {
    return text.trim().slice(0, 200) || response.statusText;
  }
}

async function post(path, body, contentType) {
  let response;
  try {
    response = await fetch(path, { method: "POST", headers: { "Content-Type": contentType }, body });
  } catch (error) {
    throw new Error(`the model service cannot be reached (${error.message}); is it running?`);
  }
  if (response.status === 404 || response.status >= 500) { // down, starting, or not the service
    throw new Error(`the model service is not ready (HTTP ${response.status}: ${await reason(response)})`);
  }
  if (!response.ok) throw new Error(`${await reason(response)} (HTTP ${response.status})`);
  return response.json();
}

function updateBusy() {
  const busy = state.outstanding > 0 || state.drawingSent || state.sendAgain || state.timer !== null;
  result.setAttribute("aria-busy", String(busy));
}

function showAnswer(answer, what) {
  $("label").textContent = answer.label;
  $("label").classList.toggle("guess", answer.unsure === true);
  $("unsure").hidden = answer.unsure !== true;
  $("source").textContent = `From ${what}.`;
  answer.probabilities.forEach((p, digit) => {
    const percent = `${(100 * p).toFixed(1)}`;
    bars[digit].fill.style.width = `${percent}%`;
    bars[digit].pct.textContent = `${percent} %`;
    bars[digit].row.classList.toggle("best", digit === answer.label);
  });
  const image = seen.createImageData(28, 28);
  answer.preprocessed.flat().forEach((grey, i) => {
    image.data.set([grey, grey, grey, 255], 4 * i);
  });
  seen.putImageData(image, 0, 0);
  state.seen = answer.preprocessed;
  $("correct").hidden = false;
  $("correction-status").textContent = "";
}

function resetAnswer(note) {
  $("label").textContent = "–";
  $("label").classList.remove("guess");
  $("unsure").hidden = true;
  $("source").textContent = note;
  for (const bar of bars) {
    bar.fill.style.width = "0%";
    bar.pct.textContent = "0.0 %";
    bar.row.classList.remove("best");
  }
  seen.fillStyle = "#000";
  seen.fillRect(0, 0, 28, 28);
  state.seen = null;
  $("correct").hidden = true;
}

// ----- corrections --------------------------------------------------------------------------

async function sendCorrection(event) {
  event.preventDefault();
  const truth = $("truth").value;
  if (state.seen === null || truth === "") return;
  const status = $("correction-status");
  status.textContent = "Sending…";
  try {
    await post("/feedback", JSON.stringify({ label: Number(truth), digit: state.seen }),
      "application/json");
    status.textContent = `Thanks: kept as a ${truth}, for the model to learn from.`;
    clearError("feedback");
  } catch (error) {
    status.textContent = "";
    showError(`Could not send the correction: ${error.message}`, "feedback");
  }
}

async function predict(body, contentType, what, asked) {
  state.outstanding += 1;
  updateBusy();
  try {
    const answer = await post("/predict_image", body, contentType);
    if (asked === state.generation) {
      showAnswer(answer, what);
      clearError("predict");
    }
  } catch (error) {
    if (asked === state.generation) {
      resetAnswer("No answer.");
      showError(`Could not classify ${what}: ${error.message}`);
    }
  } finally {
    state.outstanding -= 1;
    updateBusy();
  }
}

// ----- drawing -----------------------------------------------------------------------------

function clearPad() {
  pen.fillStyle = "#000"; // light ink on black, as in MNIST (the service takes either)
  pen.fillRect(0, 0, pad.width, pad.height);
  state.ink = false;
}

function predictDrawing() {
  clearTimeout(state.timer);
  state.timer = null;
  if (!state.ink) return updateBusy();
  if (state.drawingSent) {
    state.sendAgain = true; // one request at a time; the newest drawing goes next
    return updateBusy();
  }
  state.drawingSent = true;
  updateBusy(); // busy from now: toBlob is asynchronous, the request starts later
  const asked = state.generation;
  pad.toBlob(async (png) => { // the bitmap is copied now, so later strokes are not in it
    await predict(png, "image/png", "your drawing", asked);
    state.drawingSent = false;
    if (state.sendAgain) {
      state.sendAgain = false;
      predictDrawing();
    }
    updateBusy();
  }, "image/png");
}

function schedule() {
  if (state.timer === null) state.timer = setTimeout(predictDrawing, THROTTLE_MS);
  updateBusy();
}

function padPoint(event) {
  const box = pad.getBoundingClientRect(); // the pad may be shown smaller or larger than 280 px
  return {
    x: ((event.clientX - box.left) * pad.width) / box.width,
    y: ((event.clientY - box.top) * pad.height) / box.height,
  };
}

pad.addEventListener("pointerdown", (event) => {
  if (event.button !== 0 || state.stroke) return;
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  if (!state.ink) state.generation += 1; // a fresh drawing: drop answers about an earlier upload
  state.stroke = { id: event.pointerId, ...padPoint(event) };
  pen.fillStyle = "#fff";
  pen.beginPath();
  pen.arc(state.stroke.x, state.stroke.y, PEN_WIDTH / 2, 0, 2 * Math.PI);
  pen.fill();
  state.ink = true;
  schedule();
});

pad.addEventListener("pointermove", (event) => {
  if (!state.stroke || event.pointerId !== state.stroke.id) return;
  const events = event.getCoalescedEvents?.() ?? []; // a pen reports more points than frames
  pen.strokeStyle = "#fff";
  pen.lineWidth = PEN_WIDTH;
  pen.lineCap = "round";
  pen.lineJoin = "round";
  pen.beginPath();
  pen.moveTo(state.stroke.x, state.stroke.y);
  for (const each of events.length ? events : [event]) {
    Object.assign(state.stroke, padPoint(each));
    pen.lineTo(state.stroke.x, state.stroke.y);
  }
  pen.stroke();
  schedule();
});

function endStroke(event) {
  if (!state.stroke || event.pointerId !== state.stroke.id) return;
  state.stroke = null;
  predictDrawing();
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

$("correct").addEventListener("submit", sendCorrection);

$("clear").addEventListener("click", () => {
  state.generation += 1;
  clearTimeout(state.timer);
  state.timer = null;
  state.sendAgain = false;
  clearPad();
  $("upload").value = "";
  resetAnswer("Nothing yet.");
  clearError("predict");
  updateBusy();
});

// ----- uploads and model information ---------------------------------------------------------

$("upload").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (!file) return;
  state.generation += 1;
  state.sendAgain = false;
  clearPad();
  resetAnswer(`Reading ${file.name}…`);
  // Anything that is not labelled an image goes as bytes: the service judges the content.
  const contentType = file.type.startsWith("image/") ? file.type : "application/octet-stream";
  predict(file, contentType, file.name, state.generation);
});

async function loadModelInfo() {
  const line = $("model-info");
  try {
    const info = await post("/model_info", "{}", "application/json");
    const accuracy = info.metrics?.test_accuracy;
    line.textContent =
      `Model ${info.registry_model} version ${info.registry_version}` +
      (info.alias ? ` (${info.alias})` : "") +
      ` · test accuracy ${typeof accuracy === "number" ? `${(100 * accuracy).toFixed(2)} %` : "not recorded"}`;
    clearError("info");
  } catch (error) {
    line.textContent = "Model information unavailable.";
    if (errorBox.hidden || errorBox.dataset.origin === "info") { // keep a newer error in view
      showError(`No model information: ${error.message}. Trying again in 5 s.`, "info");
    }
    setTimeout(loadModelInfo, RETRY_MS);
  }
}

clearPad();
resetAnswer("Nothing yet.");
loadModelInfo();
