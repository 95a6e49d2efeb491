// inferbox chat page. Streams from /v1/chat/completions; renders model output as DOM text nodes
// only (a small Markdown subset), never as HTML, so a reply cannot inject markup or script.
"use strict";

const KEY_STORAGE = "inferbox.apiKey";
const $ = (id) => document.getElementById(id);

const state = {
  turns: [], // {role, content} sent as the conversation (system prompt is added per request)
  controller: null, // AbortController of the running request
  models: [],
};

// ------------------------------------------------------------------ API key

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = apiKey();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

let keyWaiters = [];

function askForKey(message) {
  const dialog = $("key-dialog");
  const err = $("key-error");
  err.hidden = !message;
  err.textContent = message || "";
  dialog.hidden = false;
  $("api-key").value = "";
  $("api-key").focus();
  return new Promise((resolve) => keyWaiters.push(resolve));
}

function onKeySaved(event) {
  event.preventDefault();
  const key = $("api-key").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_STORAGE, key);
  $("key-dialog").hidden = true;
  $("forget-key").hidden = false;
  const waiters = keyWaiters;
  keyWaiters = [];
  waiters.forEach((resolve) => resolve());
}

// fetch that asks for a key on 401 and retries with it
async function apiFetch(path, options) {
  for (;;) {
    const resp = await fetch(path, { ...options, headers: headers() });
    if (resp.status !== 401) return resp;
    const hadKey = Boolean(apiKey());
    sessionStorage.removeItem(KEY_STORAGE);
    await askForKey(hadKey ? "That key was not accepted." : "");
  }
}

async function errorMessage(resp) {
  try {
    const body = await resp.json();
    if (body.error && body.error.message) return body.error.message;
    if (body.detail) return String(body.detail);
  } catch (_) {
    // not JSON
  }
  return resp.status + " " + resp.statusText;
}

// ------------------------------------------------------------------ models

async function loadModels() {
  const resp = await apiFetch("/v1/models", { method: "GET" });
  if (!resp.ok) {
    setStatus("Could not list models: " + (await errorMessage(resp)), true);
    return;
  }
  const body = await resp.json();
  state.models = (body.data || []).map((m) => m.id);
  const select = $("model");
  select.replaceChildren(...state.models.map((id) => new Option(id, id)));
  $("model-label").hidden = state.models.length < 2;
  $("model-name").textContent = state.models.length === 1 ? state.models[0] : "";
}

// ------------------------------------------------------------------ safe Markdown

// Inline: `code`, **bold**, *italic* / _italic_, [text](http(s) url). Everything else is text.
const INLINE = /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)|\*\*([^*]+)\*\*|\*([^*\s][^*]*)\*|_([^_\s][^_]*)_|\[([^\]]+)\]\(([^)\s]+)\)/g;

function appendInline(parent, text) {
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    if (m.index > last) parent.append(document.createTextNode(text.slice(last, m.index)));
    let node;
    if (m[1]) {
      node = document.createElement("code");
      node.textContent = m[2];
    } else if (m[3] !== undefined) {
      node = document.createElement("strong");
      appendInline(node, m[3]);
    } else if (m[4] !== undefined || m[5] !== undefined) {
      node = document.createElement("em");
      appendInline(node, m[4] !== undefined ? m[4] : m[5]);
    } else if (/^https?:\/\//i.test(m[7])) {
      node = document.createElement("a");
      node.href = m[7];
      node.rel = "noopener noreferrer nofollow";
      node.target = "_blank";
      node.textContent = m[6];
    } else {
      node = document.createTextNode(m[0]); // not a web link: shown as typed
    }
    parent.append(node);
    last = m.index + m[0].length;
  }
  if (last < text.length) parent.append(document.createTextNode(text.slice(last)));
}

function appendLines(parent, lines) {
  lines.forEach((line, i) => {
    if (i > 0) parent.append(document.createElement("br"));
    appendInline(parent, line);
  });
}

// Blocks: ``` fences (an unclosed one runs to the end, as while streaming), # headings, - / 1. lists,
// > quotes, paragraphs separated by blank lines.
function renderMarkdown(container, text) {
  const out = [];
  const lines = text.split("\n");
  let para = [];
  let list = null;
  const flushPara = () => {
    if (para.length) {
      const p = document.createElement("p");
      appendLines(p, para);
      out.push(p);
      para = [];
    }
  };
  const flushList = () => {
    if (list) out.push(list);
    list = null;
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const fence = line.match(/^\s*```\s*([\w+-]*)\s*$/);
    if (fence) {
      flushPara();
      flushList();
      const body = [];
      i++;
      while (i < lines.length && !/^\s*```\s*$/.test(lines[i])) body.push(lines[i++]);
      const pre = document.createElement("pre");
      const code = document.createElement("code");
      if (fence[1]) code.dataset.lang = fence[1];
      code.textContent = body.join("\n");
      pre.append(code);
      out.push(pre);
      continue;
    }
    const heading = line.match(/^(#{1,6})\s+(.*)$/);
    const bullet = line.match(/^\s*[-*+]\s+(.*)$/);
    const numbered = line.match(/^\s*\d+[.)]\s+(.*)$/);
    const quote = line.match(/^>\s?(.*)$/);
    if (heading) {
      flushPara();
      flushList();
      const h = document.createElement("h" + Math.min(6, heading[1].length + 2));
      appendInline(h, heading[2]);
      out.push(h);
    } else if (bullet || numbered) {
      flushPara();
      const tag = bullet ? "UL" : "OL";
      if (!list || list.tagName !== tag) {
        flushList();
        list = document.createElement(tag);
      }
      const li = document.createElement("li");
      appendInline(li, (bullet || numbered)[1]);
      list.append(li);
    } else if (quote) {
      flushPara();
      flushList();
      const q = document.createElement("blockquote");
      appendInline(q, quote[1]);
      out.push(q);
    } else if (!line.trim()) {
      flushPara();
      flushList();
    } else {
      flushList();
      para.push(line);
    }
  }
  flushPara();
  flushList();
  container.replaceChildren(...out);
}

// ------------------------------------------------------------------ conversation view

function addMessage(role, text) {
  const el = document.createElement("div");
  el.className = "msg " + role;
  const label = document.createElement("div");
  label.className = "role";
  label.textContent = role;
  const body = document.createElement("div");
  body.className = "body";
  if (role === "assistant") renderMarkdown(body, text);
  else body.textContent = text;
  el.append(label, body);
  $("messages").append(el);
  el.scrollIntoView({ block: "end" });
  return el;
}

function setStatus(text, isError) {
  const s = $("status");
  s.textContent = text || "";
  s.classList.toggle("error", Boolean(isError));
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

function number(id, parse) {
  const raw = $(id).value.trim();
  if (raw === "") return undefined;
  const v = parse(raw);
  return Number.isFinite(v) ? v : undefined;
}

function requestBody() {
  const messages = [];
  const system = $("system-prompt").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...state.turns);
  const body = { messages, stream: true, stream_options: { include_usage: true } };
  body.model = $("model").value || state.models[0] || "default";
  const temperature = number("temperature", parseFloat);
  const topP = number("top-p", parseFloat);
  const maxTokens = number("max-tokens", (s) => parseInt(s, 10));
  if (temperature !== undefined) body.temperature = temperature;
  if (topP !== undefined) body.top_p = topP;
  if (maxTokens !== undefined) body.max_tokens = maxTokens;
  return body;
}

function formatFigures(f) {
  const parts = [];
  if (f.tokens > 1 && f.decodeMs > 0) parts.push(((f.tokens - 1) * 1000 / f.decodeMs).toFixed(1) + " tok/s");
  if (f.ttftMs !== null) parts.push("TTFT " + Math.round(f.ttftMs) + " ms");
  parts.push(f.tokens + " tokens");
  parts.push("finish: " + f.finish);
  return parts.join(" · ");
}

// ------------------------------------------------------------------ streaming

async function send(text) {
  state.turns.push({ role: "user", content: text });
  addMessage("user", text);
  const el = addMessage("assistant", "");
  const body = el.querySelector(".body");
  el.dataset.state = "streaming";
  setBusy(true);
  setStatus("");
  const controller = new AbortController();
  state.controller = controller;
  const started = performance.now();
  const figures = { tokens: 0, ttftMs: null, decodeMs: 0, finish: "…" };
  let reply = "";
  let firstAt = null;
  try {
    const resp = await apiFetch("/v1/chat/completions", {
      method: "POST", body: JSON.stringify(requestBody()), signal: controller.signal,
    });
    if (!resp.ok) throw new Error(await errorMessage(resp));
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let done = false;
    while (!done) {
      const chunk = await reader.read();
      if (chunk.done) break;
      buffer += decoder.decode(chunk.value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) !== -1) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") {
            done = true;
            break;
          }
          const msg = JSON.parse(data);
          if (msg.error) throw new Error(msg.error.message || String(msg.error));
          if (msg.usage) figures.tokens = msg.usage.completion_tokens;
          const choice = (msg.choices || [])[0];
          if (!choice) continue;
          const delta = choice.delta && choice.delta.content;
          if (delta) {
            const now = performance.now();
            if (firstAt === null) {
              firstAt = now;
              figures.ttftMs = now - started;
            }
            figures.decodeMs = now - firstAt;
            figures.tokens += 1;
            reply += delta;
            renderMarkdown(body, reply);
            el.scrollIntoView({ block: "end" });
          }
          if (choice.finish_reason) figures.finish = choice.finish_reason;
        }
      }
    }
    el.dataset.state = "done";
  } catch (err) {
    if (controller.signal.aborted) {
      figures.finish = "stopped";
      el.dataset.state = "stopped";
    } else {
      el.dataset.state = "error";
      figures.finish = "error";
      setStatus(err.message || String(err), true);
    }
  } finally {
    state.controller = null;
    setBusy(false);
  }
  if (reply) state.turns.push({ role: "assistant", content: reply });
  else if (el.dataset.state === "error") state.turns.pop(); // nothing answered: let the user retry
  const fig = document.createElement("div");
  fig.className = "figures";
  fig.textContent = formatFigures(figures);
  el.append(fig);
}

function stop() {
  if (state.controller) state.controller.abort();
}

function newChat() {
  stop();
  state.turns = [];
  $("messages").replaceChildren();
  setStatus("");
  $("prompt").focus();
}

// ------------------------------------------------------------------ wiring

function init() {
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("prompt").value.trim();
    if (!text || state.controller) return;
    $("prompt").value = "";
    send(text);
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("stop").addEventListener("click", stop);
  $("new-chat").addEventListener("click", newChat);
  $("settings-toggle").addEventListener("click", () => {
    const panel = $("settings");
    panel.hidden = !panel.hidden;
    $("settings-toggle").setAttribute("aria-expanded", String(!panel.hidden));
  });
  $("key-form").addEventListener("submit", onKeySaved);
  $("forget-key").hidden = !apiKey();
  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    $("forget-key").hidden = true;
  });
  loadModels().catch((err) => setStatus(String(err), true));
  $("prompt").focus();
}

document.addEventListener("DOMContentLoaded", init);
