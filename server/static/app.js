// The server's page: plain JavaScript, no build step. Live tab: WebRTC session on an avatar;
// Dub tab: a dubbing job with progress, preview and download.
"use strict";
const $ = (id) => document.getElementById(id);
const tokenInput = $("token");
tokenInput.value = new URLSearchParams(location.hash.slice(1)).get("token") || sessionStorage.getItem("token") || "";
tokenInput.onchange = () => { sessionStorage.setItem("token", tokenInput.value); loadAvatars(); };

function authHeaders() {
  return tokenInput.value ? { Authorization: "Bearer " + tokenInput.value } : {};
}

async function api(method, path, body) {
  const init = { method, headers: authHeaders() };
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) { init.body = JSON.stringify(body); init.headers["Content-Type"] = "application/json"; }
  const response = await fetch(path, init);
  const data = response.headers.get("Content-Type")?.includes("json") ? await response.json() : {};
  if (!response.ok) throw new Error(data.error || response.status + " " + response.statusText);
  return data;
}

function withToken(path) {
  return tokenInput.value ? path + "?token=" + encodeURIComponent(tokenInput.value) : path;
}

for (const name of ["live", "dub"]) {
  $("tab-" + name).onclick = () => {
    for (const other of ["live", "dub"]) {
      $(other).hidden = other !== name;
      $("tab-" + other).classList.toggle("active", other === name);
    }
  };
}

async function followJob(jobId, bar, label) {
  bar.hidden = false;
  for (;;) {
    const job = await api("GET", "/api/jobs/" + jobId);
    bar.value = job.progress;
    const eta = job.eta_s == null ? "" : ", about " + Math.ceil(job.eta_s) + " s left in this stage";
    label.textContent = job.state + (job.stage ? " (" + job.stage + eta + ")" : "");
    if (job.state === "failed" || job.state === "cancelled") throw new Error(job.error);
    if (job.state === "done") return job;
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

// ------------------------------------------------------------------ avatars
async function loadAvatars() {
  try {
    const { avatars } = await api("GET", "/api/avatars");
    const select = $("avatar"), chosen = select.value;
    select.replaceChildren(...avatars.map((a) => new Option(`${a.name} (${a.width}x${a.height}, ${a.fps} fps)`, a.name)));
    if (avatars.some((a) => a.name === chosen)) select.value = chosen;
    $("avatar-list").replaceChildren(...avatars.map((a) => {
      const item = document.createElement("li"), remove = document.createElement("button");
      item.textContent = `${a.name}: ${a.width}x${a.height}, ${a.fps} fps, ${a.frames} frames`;
      remove.textContent = "Delete";
      remove.onclick = async () => {
        try { await api("DELETE", "/api/avatars/" + a.name); } catch (e) { $("avatar-state").textContent = e.message; }
        loadAvatars();
      };
      item.append(remove);
      return item;
    }));
  } catch (e) {
    $("live-state").textContent = e.message;
  }
}

$("avatar-create").onclick = async () => {
  const form = new FormData();
  form.append("name", $("avatar-name").value);
  if ($("avatar-face").files[0]) form.append("face", $("avatar-face").files[0]);
  if ($("avatar-fast").checked) form.append("fast", "true");
  try {
    const { job_id } = await api("POST", "/api/avatars", form);
    await followJob(job_id, $("avatar-progress"), $("avatar-state"));
    loadAvatars();
  } catch (e) {
    $("avatar-state").textContent = "error: " + e.message;
  }
};

// ------------------------------------------------------------------ live session
let pc = null, sessionId = null, events = null, figureTimer = null, lastFrames = 0, recorder = null;

function setConnected(connected) {
  $("connect").disabled = connected;
  for (const id of ["disconnect", "speak", "record", "interrupt"]) $(id).disabled = !connected;
}

function gatheringDone(peer) {
  if (peer.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, 3000);
    peer.addEventListener("icegatheringstatechange", () => {
      if (peer.iceGatheringState === "complete") { clearTimeout(timer); resolve(); }
    });
  });
}

$("connect").onclick = async () => {
  $("live-state").textContent = "connecting...";
  try {
    pc = new RTCPeerConnection();
    pc.addTransceiver("video", { direction: "recvonly" });
    if ($("echo").checked) {
      const mic = await navigator.mediaDevices.getUserMedia({ audio: true });
      pc.addTransceiver(mic.getAudioTracks()[0], { direction: "sendrecv" });
    } else {
      pc.addTransceiver("audio", { direction: "recvonly" });
    }
    const stream = new MediaStream();
    pc.ontrack = (event) => { stream.addTrack(event.track); $("video").srcObject = stream; };
    await pc.setLocalDescription(await pc.createOffer());
    await gatheringDone(pc);
    const answer = await api("POST", "/api/sessions",
      { avatar: $("avatar").value, sdp: pc.localDescription.sdp, type: pc.localDescription.type });
    sessionId = answer.session_id;
    await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    pc.onconnectionstatechange = () => { $("live-state").textContent = pc.connectionState; };
    listen(sessionId);
    setConnected(true);
    figureTimer = setInterval(showFigures, 1000);
  } catch (e) {
    $("live-state").textContent = "error: " + e.message;
    disconnect();
  }
};

function listen(id) {
  events = new EventSource(withToken("/api/sessions/" + id + "/events"));
  events.addEventListener("speech_start", (e) => {
    const data = JSON.parse(e.data);
    $("fig-speaking").textContent = "yes";
    if (data.latency_ms != null) $("fig-latency").textContent = data.latency_ms + " ms";
  });
  events.addEventListener("speech_end", () => { $("fig-speaking").textContent = "no"; });
  events.addEventListener("stats", (e) => {
    const stats = JSON.parse(e.data);
    $("fig-late").textContent = stats.late;
    $("fig-caught-up").textContent = stats.caught_up;
  });
}

function showFigures() {
  const video = $("video");
  if (!video.getVideoPlaybackQuality) return;
  const quality = video.getVideoPlaybackQuality();
  $("fig-fps").textContent = quality.totalVideoFrames - lastFrames;
  $("fig-dropped").textContent = quality.droppedVideoFrames;
  lastFrames = quality.totalVideoFrames;
}

async function disconnect() {
  clearInterval(figureTimer);
  if (events) events.close();
  if (sessionId) { try { await api("DELETE", "/api/sessions/" + sessionId); } catch (e) { /* already gone */ } }
  if (pc) pc.close();
  pc = sessionId = events = null;
  setConnected(false);
}
$("disconnect").onclick = async () => { await disconnect(); $("live-state").textContent = "disconnected"; };

async function sendSpeech(blob, name) {
  const form = new FormData();
  form.append("audio", blob, name);
  $("speech-state").textContent = "sending...";
  try {
    const result = await api("POST", "/api/sessions/" + sessionId + "/speech", form);
    $("speech-state").textContent = "queued " + result.seconds + " s of speech";
  } catch (e) {
    $("speech-state").textContent = "error: " + e.message;
  }
}

$("speak").onclick = () => {
  const file = $("speech-file").files[0];
  if (file) sendSpeech(file, file.name); else $("speech-state").textContent = "choose a speech file first";
};

$("record").onclick = async () => {
  if (recorder) { recorder.stop(); return; }
  const mic = await navigator.mediaDevices.getUserMedia({ audio: true });
  const chunks = [];
  recorder = new MediaRecorder(mic);
  recorder.ondataavailable = (e) => chunks.push(e.data);
  recorder.onstop = () => {
    mic.getTracks().forEach((t) => t.stop());
    const type = recorder.mimeType || "audio/webm";
    recorder = null;
    $("record").textContent = "Record";
    sendSpeech(new Blob(chunks, { type }), type.includes("ogg") ? "speech.ogg" : "speech.webm");
  };
  recorder.start();
  $("record").textContent = "Stop and send";
};

$("interrupt").onclick = async () => {
  try { await api("POST", "/api/sessions/" + sessionId + "/interrupt"); } catch (e) { $("speech-state").textContent = e.message; }
};

// ------------------------------------------------------------------ dubbing
$("dub-form").onsubmit = async (event) => {
  event.preventDefault();
  const form = event.target, data = new FormData();
  data.append("face", form.face.files[0]);
  data.append("audio", form.audio.files[0]);
  for (const flag of ["fast", "nosmooth", "color_match"]) if (form[flag].checked) data.append(flag, "true");
  data.append("resize_factor", form.resize_factor.value || "1");
  data.append("blend", form.blend.value);
  data.append("face_select", form.face_select.value.trim() || "best");
  for (const span of form.querySelectorAll("[data-four]")) {
    const values = [...span.querySelectorAll("input")].map((i) => i.value.trim());
    if (values.every((v) => v !== "")) data.append(span.dataset.four, values.join(" "));
  }
  $("dub-start").disabled = true;
  $("dub-video").hidden = $("dub-download").hidden = true;
  try {
    const { job_id } = await api("POST", "/api/jobs", data);
    await followJob(job_id, $("dub-progress"), $("dub-state"));
    const response = await fetch("/api/jobs/" + job_id + "/result", { headers: authHeaders() });
    if (!response.ok) throw new Error("result: " + response.status);
    const url = URL.createObjectURL(await response.blob());
    $("dub-video").src = url;
    $("dub-download").href = url;
    $("dub-download").download = "dub-" + job_id.slice(0, 8) + ".mp4";
    $("dub-video").hidden = $("dub-download").hidden = false;
  } catch (e) {
    $("dub-state").textContent = "error: " + e.message;
  }
  $("dub-start").disabled = false;
};

window.addEventListener("pagehide", () => { if (sessionId) disconnect(); });
loadAvatars();
