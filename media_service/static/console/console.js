// The media console: plain DOM, no framework, no build step.
//
// Rules this file keeps (docs/design.md, "The browser console"):
// * every string from the API reaches the page through textContent or an attribute, never as
//   HTML (there is no innerHTML, insertAdjacentHTML or document.write here);
// * credentials live in memory (`session`), and in sessionStorage only when the user asks;
//   fetches send them as an Authorization header with credentials "omit", so no cookie or
//   browser-cached login is ever used;
// * audio plays from a blob: URL made from an authenticated fetch, never from a URL that
//   carries a secret.
"use strict";

(function () {
  const API = document.body.dataset.api || "/v3/media";
  const STORAGE_KEY = "media-console.session";
  const NOTICE_MS = 6000;

  // ---- state ---------------------------------------------------------------------------------

  let session = null; // {mode, authorization, label, expiresAt}
  let remembered = false; // "Stay signed in": session state may outlive a reload
  let query = null; // the filters of the last search: {order, page_size, start_time?, end_time?}
  let pageIndex = 0;
  let items = new Map(); // id -> item, for the page on screen
  let objectUrls = new Set(); // blob: URLs to revoke when the page changes
  let pendingFile = null;
  let currentUpload = null; // {cancel}
  let editing = null; // the item in the edit dialog
  let deleting = null; // the item in the delete dialog
  let noticeTimer = 0;

  // ---- small DOM helpers ---------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);

  // el("p", {className: "x", dataset: {id: "1"}}, "text", child): text children become text
  // nodes, so API strings can never turn into markup.
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (key === "dataset") Object.assign(node.dataset, value);
      else if (key === "attrs") for (const [a, v] of Object.entries(value)) node.setAttribute(a, v);
      else node[key] = value;
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function show(node, visible) {
    node.hidden = !visible;
  }

  function notice(text, kind) {
    const box = $("notice");
    box.textContent = text;
    box.className = "notice " + (kind || "info");
    show(box, true);
    clearTimeout(noticeTimer);
    if (kind !== "error") noticeTimer = setTimeout(() => show(box, false), NOTICE_MS);
  }

  function fieldError(id, text) {
    const box = $(id);
    box.textContent = text || "";
    show(box, Boolean(text));
  }

  // ---- formatting ----------------------------------------------------------------------------

  function formatBytes(n) {
    if (n === null || n === undefined) return "";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let value = n;
    let unit = 0;
    while (value >= 1000 && unit < units.length - 1) {
      value /= 1000;
      unit += 1;
    }
    return (unit === 0 ? String(value) : value.toFixed(value < 10 ? 1 : 0)) + " " + units[unit];
  }

  function formatDuration(ms) {
    const seconds = ms / 1000;
    if (seconds < 60) return seconds.toFixed(1) + " s";
    const whole = Math.round(seconds);
    return Math.floor(whole / 60) + ":" + String(whole % 60).padStart(2, "0");
  }

  function formatTime(iso) {
    if (!iso) return "";
    const date = new Date(iso);
    return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
  }

  // datetime-local wants "YYYY-MM-DDTHH:MM" in local time (minutes: the field stays narrow).
  function localInputValue(date) {
    const pad = (n) => String(n).padStart(2, "0");
    return (
      date.getFullYear() + "-" + pad(date.getMonth() + 1) + "-" + pad(date.getDate()) +
      "T" + pad(date.getHours()) + ":" + pad(date.getMinutes())
    );
  }

  // The window's ends are inclusive: "to 15:16" means up to the end of that minute.
  function isoFromInput(value, endOfMinute) {
    if (!value) return null;
    const date = new Date(value);
    if (Number.isNaN(date.getTime())) return null;
    if (endOfMinute && date.getSeconds() === 0) date.setSeconds(59, 999);
    return date.toISOString();
  }

  function displayName(item) {
    return item.title || item.original_file_name || item.id;
  }

  function isAudio(item) {
    return Boolean(item.audio) || String(item.mime_type || "").startsWith("audio/");
  }

  // ---- credentials ---------------------------------------------------------------------------

  function base64Utf8(text) {
    let binary = "";
    for (const byte of new TextEncoder().encode(text)) binary += String.fromCharCode(byte);
    return btoa(binary);
  }

  // The claims of a JWT, for the label only: the server checks the signature.
  function jwtClaims(token) {
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      const padded = part + "=".repeat((4 - (part.length % 4)) % 4);
      const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
      const claims = JSON.parse(new TextDecoder().decode(bytes));
      return claims && typeof claims === "object" ? claims : {};
    } catch (_error) {
      return {};
    }
  }

  function credentialsFromForm() {
    const form = $("sign-in-form");
    const mode = form.elements.mode.value;
    if (mode === "jwt") {
      const token = $("jwt").value.trim().replace(/^Bearer\s+/i, "");
      if (!token) return {error: "Paste a JWT."};
      const claims = jwtClaims(token);
      const app = typeof claims.application_id === "string" ? claims.application_id : "?";
      let expiresAt = null;
      if (typeof claims.exp === "number") expiresAt = claims.exp * 1000;
      else if (typeof claims.iat === "number") expiresAt = (claims.iat + 15 * 60) * 1000;
      return {mode, authorization: "Bearer " + token, label: "Application " + app, expiresAt};
    }
    const key = $("api-key").value.trim();
    const secret = $("api-secret").value;
    if (!key || !secret) return {error: "Enter the API key and the secret."};
    if (key.includes(":")) return {error: "An API key has no colon."};
    return {
      mode,
      authorization: "Basic " + base64Utf8(key + ":" + secret),
      label: "Account " + key,
      expiresAt: null,
    };
  }

  function saveSession(remember) {
    try {
      if (remember) sessionStorage.setItem(STORAGE_KEY, JSON.stringify(session));
      else sessionStorage.removeItem(STORAGE_KEY);
    } catch (_error) {
      // Storage refused (private mode, quota): the session still works, in memory.
    }
  }

  function restoredSession() {
    try {
      const saved = JSON.parse(sessionStorage.getItem(STORAGE_KEY) || "null");
      if (saved && typeof saved.authorization === "string" && typeof saved.label === "string") {
        return saved;
      }
    } catch (_error) {
      // Unreadable: sign in again.
    }
    return null;
  }

  // ---- the API -------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, problem) {
      const title = (problem && problem.title) || "HTTP " + status;
      const detail = problem && problem.detail;
      super(detail ? title + ": " + detail : title);
      this.status = status;
      this.problem = problem || {};
    }

    describe() {
      const invalid = this.problem.invalid_parameters;
      if (Array.isArray(invalid) && invalid.length) {
        return this.message + " (" + invalid.map((p) => p.name + ": " + p.reason).join("; ") + ")";
      }
      return this.message;
    }
  }

  async function problemOf(response) {
    try {
      return await response.json();
    } catch (_error) {
      return null;
    }
  }

  async function api(path, options, auth) {
    const headers = new Headers((options && options.headers) || {});
    headers.set("Authorization", (auth || session).authorization);
    let response;
    try {
      response = await fetch(path, {
        ...options,
        headers,
        credentials: "omit", // no cookies, no browser-cached credentials, no login prompt
        cache: "no-store",
        redirect: "follow",
      });
    } catch (_error) {
      throw new ApiError(0, {title: "The service did not answer", detail: "check your network"});
    }
    if (!response.ok) throw new ApiError(response.status, await problemOf(response));
    return response;
  }

  // A request refused as unauthenticated mid-session means the token expired or the secret was
  // rotated: sign out rather than fail every click.
  function failed(error, fallbackBox) {
    if (error instanceof ApiError && error.status === 401 && session) {
      signOut();
      notice("Your credentials were refused (expired or rotated?). Sign in again.", "error");
      return;
    }
    const text = error instanceof ApiError ? error.describe() : String(error);
    if (fallbackBox) fieldError(fallbackBox, text);
    else notice(text, "error");
  }

  // ---- sign in and out -----------------------------------------------------------------------

  async function signIn(candidate, remember) {
    $("sign-in-submit").disabled = true;
    fieldError("sign-in-error", "");
    try {
      await api(API + "?page_size=1", {}, candidate);
    } catch (error) {
      const refused = error instanceof ApiError && (error.status === 401 || error.status === 403);
      fieldError(
        "sign-in-error",
        refused ? "These credentials were refused." : error.describe ? error.describe() : String(error),
      );
      return false;
    } finally {
      $("sign-in-submit").disabled = false;
    }
    session = candidate;
    remembered = remember;
    saveSession(remember);
    $("api-secret").value = "";
    $("jwt").value = "";
    let who = session.label;
    if (session.expiresAt) {
      who += " · token expires " + new Date(session.expiresAt).toLocaleTimeString();
    }
    $("who").textContent = who;
    show($("sign-in"), false);
    show($("identity"), true);
    show($("workspace"), true);
    if (!$("search-start").value) {
      $("search-start").value = localInputValue(new Date(Date.now() - 7 * 24 * 3600 * 1000));
    }
    startSearch();
    return true;
  }

  function signOut() {
    session = null;
    tusOffered = null; // the next sign-in may be to a redeployed server: ask again
    if (currentUpload) currentUpload.cancel();
    forgetAllUploads();
    remembered = false;
    saveSession(false);
    clearItems();
    query = null;
    show($("workspace"), false);
    show($("identity"), false);
    show($("sign-in"), true);
    $("summary").textContent = "";
    $("api-key").focus();
  }

  // ---- search and the list -------------------------------------------------------------------

  function clearItems() {
    for (const url of objectUrls) URL.revokeObjectURL(url);
    objectUrls = new Set();
    items = new Map();
    $("items").replaceChildren();
    show($("empty"), false);
  }

  function startSearch() {
    const start = isoFromInput($("search-start").value);
    const end = isoFromInput($("search-end").value, true);
    if (start && end && start > end) {
      notice("The start of the time window is after its end.", "error");
      return;
    }
    query = {order: $("search-order").value, page_size: $("search-page-size").value};
    if (start) query.start_time = start;
    if (end) query.end_time = end;
    loadPage(0);
  }

  async function loadPage(index) {
    if (!session || !query) return;
    const params = new URLSearchParams({...query, page_index: String(index)});
    $("search-submit").disabled = true;
    document.body.dataset.loading = "true";
    try {
      const response = await api(API + "?" + params.toString(), {});
      const page = await response.json();
      const found = (page._embedded && page._embedded.media) || [];
      if (!found.length && index > 0 && page.count > 0) {
        loadPage(Math.max(0, Math.ceil(page.count / page.page_size) - 1));
        return;
      }
      pageIndex = index;
      renderPage(page, found);
    } catch (error) {
      failed(error);
    } finally {
      $("search-submit").disabled = false;
      delete document.body.dataset.loading;
    }
  }

  function renderPage(page, found) {
    clearItems();
    const list = $("items");
    for (const item of found) {
      items.set(item.id, item);
      list.append(renderItem(item));
    }
    show($("empty"), found.length === 0);
    const pages = Math.max(1, Math.ceil(page.count / page.page_size));
    const noun = page.count === 1 ? "item" : "items";
    $("summary").textContent = page.count + " " + noun + " · page " + (pageIndex + 1) + " of " + pages;
    $("prev-page").disabled = !(page._links && page._links.prev);
    $("next-page").disabled = !(page._links && page._links.next);
  }

  function badge(text, kind) {
    return el("span", {className: "badge " + (kind || "")}, text);
  }

  function renderItem(item) {
    const actions = el("div", {className: "item-actions"});
    const player = el("div", {className: "player"});
    if (isAudio(item)) {
      const play = el("button", {type: "button", className: "play", textContent: "Play"});
      play.addEventListener("click", () => playItem(item, play, player));
      actions.append(play);
    }
    const download = el("button", {type: "button", className: "download", textContent: "Download"});
    download.addEventListener("click", () => downloadItem(item, download));
    const edit = el("button", {type: "button", className: "edit", textContent: "Edit"});
    edit.addEventListener("click", () => openEdit(item));
    const remove = el("button", {type: "button", className: "delete danger-text", textContent: "Delete"});
    remove.addEventListener("click", () => openDelete(item));
    actions.append(download, edit, remove);

    const meta = [item.original_file_name, item.mime_type, formatBytes(item.media_size)]
      .filter(Boolean)
      .join(" · ");

    return el(
      "li",
      {className: "item", dataset: {id: item.id}},
      el(
        "div",
        {className: "item-head"},
        el(
          "div",
          {className: "item-text"},
          el("h3", {className: "item-title"}, displayName(item)),
          el("p", {className: "item-meta"}, meta),
          el("p", {className: "item-time"}, "Uploaded " + formatTime(item.time_created)),
        ),
        actions,
      ),
      renderBadges(item),
      item.description ? el("p", {className: "item-description"}, item.description) : null,
      player,
      renderDetails(item),
    );
  }

  function renderBadges(item) {
    const audio = item.audio || {};
    const hasDuration = audio.duration_ms !== null && audio.duration_ms !== undefined;
    const limit = item.max_downloads_allowed ? " / " + item.max_downloads_allowed : "";
    const noun = item.times_downloaded === 1 ? " download" : " downloads";
    return el(
      "p",
      {className: "badges"},
      item.public ? badge("Public", "public") : badge("Private"),
      hasDuration ? badge(formatDuration(audio.duration_ms), "duration") : null,
      audio.codec ? badge(String(audio.codec).toUpperCase()) : null,
      badge(item.times_downloaded + limit + noun, "downloads"),
    );
  }

  function cardOf(id) {
    return [...$("items").children].find((li) => li.dataset.id === id) || null;
  }

  // After a play or a download: the item's count moved; show it without redrawing the card
  // (which would drop its player). The count is cosmetic, so a failure here is ignored.
  async function refreshBadges(id) {
    try {
      const response = await api(API + "/" + encodeURIComponent(id) + "/info", {});
      const fresh = await response.json();
      const badges = cardOf(id) && cardOf(id).querySelector(".badges");
      if (badges && items.has(id)) {
        items.set(id, fresh);
        badges.replaceWith(renderBadges(fresh));
      }
    } catch (_error) {
      // Shown again by the next search.
    }
  }

  function renderDetails(item) {
    const rows = [
      ["ID", item.id],
      ["ETag", item.etag],
      ["Account", item.account_id],
      ["Application", item.application_id],
      ["Store", item.store_id],
      ["Last updated", formatTime(item.time_last_updated)],
      ["Primary metadata", item.metadata_primary],
      ["Secondary metadata", item.metadata_secondary],
      ["Source URL", item.source_url],
    ];
    if (item.audio) {
      const facts = [
        item.audio.sample_rate ? item.audio.sample_rate + " Hz" : null,
        item.audio.channels ? item.audio.channels + " ch" : null,
        item.audio.bit_rate ? Math.round(item.audio.bit_rate / 1000) + " kbit/s" : null,
      ];
      rows.push(["Audio", facts.filter(Boolean).join(" · ")]);
    }
    const list = el("dl");
    for (const [name, value] of rows) {
      if (value === null || value === undefined || value === "") continue;
      list.append(el("dt", {}, name), el("dd", {}, String(value)));
    }
    return el("details", {className: "item-details"}, el("summary", {}, "Details"), list);
  }

  function replaceItem(item) {
    items.set(item.id, item);
    const old = cardOf(item.id);
    if (old) old.replaceWith(renderItem(item));
  }

  // ---- content: play and download ------------------------------------------------------------

  async function contentUrl(item) {
    const response = await api(API + "/" + encodeURIComponent(item.id), {});
    const blob = await response.blob();
    const url = URL.createObjectURL(blob);
    objectUrls.add(url);
    refreshBadges(item.id);
    return url;
  }

  async function playItem(item, button, player) {
    const existing = player.querySelector("audio");
    if (existing) {
      existing.play().catch(() => {});
      return;
    }
    button.disabled = true;
    button.textContent = "Loading…";
    try {
      const url = await contentUrl(item);
      const audio = el("audio", {controls: true, preload: "auto", src: url});
      audio.setAttribute("aria-label", "Play " + displayName(item));
      player.append(audio);
      button.textContent = "Play";
      audio.play().catch(() => {}); // a browser may want another click; the controls are there
    } catch (error) {
      button.textContent = "Play";
      failed(error);
    } finally {
      button.disabled = false;
    }
  }

  async function downloadItem(item, button) {
    button.disabled = true;
    try {
      const url = await contentUrl(item);
      const link = el("a", {href: url, download: item.original_file_name || item.id});
      document.body.append(link);
      link.click();
      link.remove();
    } catch (error) {
      failed(error);
    } finally {
      button.disabled = false;
    }
  }

  // ---- upload --------------------------------------------------------------------------------

  // Upload transports take {file, fields, onProgress} and return {promise, cancel}; the promise
  // resolves with the stored item. Two sit in `transports`: a multipart POST to /v3/media over
  // XHR (fetch cannot report upload progress), and tus at /v3/media/uploads for large files,
  // which survives a lost connection. chooseTransport() picks one; nothing else needs to know.
  // onProgress(loaded, total, note): `note` says why the bar paused (a resume), if it did.
  function parsedOrNull(text) {
    try {
      return JSON.parse(text);
    } catch (_error) {
      return null;
    }
  }

  function cancelledError() {
    return new ApiError(0, {title: "Upload cancelled", cancelled: true});
  }

  function multipartTransport({file, fields, onProgress}) {
    const xhr = new XMLHttpRequest();
    const promise = new Promise((resolve, reject) => {
      const body = new FormData();
      for (const [name, value] of Object.entries(fields)) body.append(name, value);
      body.append("filedata", file, file.name);
      xhr.open("POST", API);
      xhr.setRequestHeader("Authorization", session.authorization);
      xhr.responseType = "text";
      xhr.upload.addEventListener("progress", (event) => {
        if (event.lengthComputable) onProgress(event.loaded, event.total);
      });
      xhr.addEventListener("load", () => {
        const parsed = parsedOrNull(xhr.responseText);
        if (xhr.status === 201 && parsed) resolve(parsed);
        else reject(new ApiError(xhr.status, parsed));
      });
      xhr.addEventListener("error", () =>
        reject(new ApiError(0, {title: "The upload failed", detail: "the connection was lost"})),
      );
      xhr.addEventListener("abort", () => reject(cancelledError()));
      xhr.send(body);
    });
    return {promise, cancel: () => xhr.abort()};
  }

  // ---- upload: tus (resumable) ---------------------------------------------------------------

  const TUS_VERSION = "1.0.0";
  const TUS_PATH = API + "/uploads";
  const TUS_RETRIES = 6; // consecutive failures before giving up: ~30 s of backoff in all
  const TUS_BACKOFF_MS = [500, 1000, 2000, 4000, 8000, 15000];
  // Statuses after which the server still holds the upload: ask it where it got to and go on.
  // 409 is an offset the server disagrees with, 423 a PATCH still running for a dropped socket.
  const TUS_RESUMABLE_STATUS = new Set([0, 409, 423]);

  // Sizes in bytes. The page may lower both with ?tus_threshold=&tus_chunk= (the browser tests
  // do, to exercise tus without 8 MiB files); that only changes which valid route a file takes
  // and how finely it is sliced, so it is harmless to leave reachable. The slice is clamped so a
  // stray value cannot turn one upload into thousands of requests.
  const TUS_SETTINGS = (() => {
    const params = new URLSearchParams(location.search);
    const number = (name, fallback) => {
      const value = Number(params.get(name));
      return params.has(name) && Number.isSafeInteger(value) && value >= 0 ? value : fallback;
    };
    const MiB = 1024 * 1024;
    return {
      threshold: number("tus_threshold", 8 * MiB),
      chunk: Math.min(8 * MiB, Math.max(64 * 1024, number("tus_chunk", 8 * MiB))),
    };
  })();

  let tusOffered = null; // a promise of whether the server speaks tus, asked once per session

  // OPTIONS needs no credentials, but the console sends them on every request all the same.
  function serverSpeaksTus() {
    if (!tusOffered) {
      tusOffered = api(TUS_PATH, {method: "OPTIONS"})
        .then((response) => (response.headers.get("Tus-Version") || "").split(",")
          .map((v) => v.trim()).includes(TUS_VERSION))
        .catch(() => false);
    }
    return tusOffered;
  }

  // The service names uploads and items by absolute URL under its public base, which may be a
  // proxy's name for this same host; the path is what matters, and keeping the request on this
  // origin is what connect-src 'self' allows anyway.
  function sameOriginPath(url) {
    const parsed = new URL(url, location.href);
    return parsed.pathname + parsed.search;
  }

  function tusMetadata(file, fields) {
    const pairs = {filename: file.name, filetype: file.type, ...fields};
    return Object.entries(pairs)
      .filter(([, value]) => value !== undefined && value !== null && value !== "")
      .map(([key, value]) => key + " " + base64Utf8(String(value)))
      .join(",");
  }

  async function tusCreate(state, file, fields) {
    const response = await api(TUS_PATH, {
      method: "POST",
      signal: state.abort.signal,
      headers: {
        "Tus-Resumable": TUS_VERSION,
        "Upload-Length": String(file.size),
        "Upload-Metadata": tusMetadata(file, fields),
      },
    }, state.auth);
    return sameOriginPath(response.headers.get("Location"));
  }

  // What a HEAD or PATCH answer says: how far the server is, and the item once it is complete.
  function tusStatus(header) {
    const location = header("Media-Location");
    const offset = Number(header("Upload-Offset"));
    return {offset, location: location && sameOriginPath(location)};
  }

  async function tusHead(state) {
    const response = await api(state.url, {
      method: "HEAD",
      signal: state.abort.signal,
      headers: {"Tus-Resumable": TUS_VERSION},
    }, state.auth);
    return tusStatus((name) => response.headers.get(name));
  }

  // One slice from `offset`, over XHR for its progress events.
  function tusPatch(state, file, offset, onProgress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      state.xhr = xhr;
      xhr.open("PATCH", state.url);
      xhr.setRequestHeader("Authorization", state.auth.authorization);
      xhr.setRequestHeader("Tus-Resumable", TUS_VERSION);
      xhr.setRequestHeader("Upload-Offset", String(offset));
      xhr.setRequestHeader("Content-Type", "application/offset+octet-stream");
      xhr.upload.addEventListener("progress", (event) =>
        onProgress(offset + event.loaded, file.size),
      );
      xhr.addEventListener("load", () => {
        if (xhr.status === 204) resolve(tusStatus((name) => xhr.getResponseHeader(name)));
        else reject(new ApiError(xhr.status, parsedOrNull(xhr.responseText)));
      });
      xhr.addEventListener("error", () =>
        reject(new ApiError(0, {title: "The upload failed", detail: "the connection was lost"})),
      );
      xhr.addEventListener("abort", () => reject(cancelledError()));
      xhr.send(file.slice(offset, Math.min(file.size, offset + TUS_SETTINGS.chunk)));
    });
  }

  function canResume(error) {
    if (!(error instanceof ApiError) || error.problem.cancelled) return false;
    return TUS_RESUMABLE_STATUS.has(error.status) || error.status >= 500;
  }

  // A wait that Cancel cuts short.
  function pause(state, ms) {
    return new Promise((resolve) => {
      state.wake = resolve;
      state.timer = setTimeout(resolve, ms);
    });
  }

  // PATCH slice after slice from `offset`; after a failure, HEAD for the server's offset (its
  // word, not ours: part of the lost slice may have landed) and go on from there.
  async function tusSend(state, file, onProgress, start) {
    let offset = start; // null: ask the server
    let failures = 0;
    for (;;) {
      try {
        const status =
          offset === null ? await tusHead(state) : await tusPatch(state, file, offset, onProgress);
        if (status.location) return status.location;
        offset = status.offset;
        onProgress(offset, file.size);
        failures = 0;
      } catch (error) {
        if (state.cancelled) throw cancelledError();
        if (!canResume(error) || failures >= TUS_RETRIES) throw error;
        onProgress(offset === null ? state.lastOffset : offset, file.size, "resuming");
        await pause(state, TUS_BACKOFF_MS[Math.min(failures, TUS_BACKOFF_MS.length - 1)]);
        if (state.cancelled) throw cancelledError();
        failures += 1;
        offset = null;
      }
      if (offset !== null) state.lastOffset = offset;
    }
  }

  // ---- upload: unfinished tus uploads across a reload -----------------------------------------
  //
  // With "Stay signed in" on, an upload's URL is kept in sessionStorage under the file's name,
  // size and modification time, so dropping the same file after a reload asks the server where
  // it got to instead of starting over. Without it nothing is kept: the reload signed the user
  // out, and the upload is session state like the credentials. Sign-out forgets them all.

  const UPLOAD_KEY_PREFIX = "media-console.upload:";

  function uploadKey(file) {
    return UPLOAD_KEY_PREFIX + JSON.stringify([file.name, file.size, file.lastModified]);
  }

  function recallUpload(state, file) {
    if (!state.remember) return null;
    try {
      const saved = JSON.parse(sessionStorage.getItem(uploadKey(file)) || "null");
      // Another principal's upload would only be refused: start over rather than ask.
      const ours = saved && typeof saved.url === "string" && saved.label === state.auth.label;
      if (ours) return saved.url;
    } catch (_error) {
      // Unreadable: start over.
    }
    return null;
  }

  function keepUpload(state, file) {
    if (!state.remember) return;
    try {
      const kept = {url: state.url, label: state.auth.label};
      sessionStorage.setItem(uploadKey(file), JSON.stringify(kept));
    } catch (_error) {
      // Storage refused: the upload still works, it just cannot outlive the page.
    }
  }

  function forgetUpload(file) {
    try {
      sessionStorage.removeItem(uploadKey(file));
    } catch (_error) {
      // Nothing kept.
    }
  }

  function forgetAllUploads() {
    try {
      const keys = [];
      for (let i = 0; i < sessionStorage.length; i += 1) keys.push(sessionStorage.key(i));
      for (const key of keys) if (key.startsWith(UPLOAD_KEY_PREFIX)) sessionStorage.removeItem(key);
    } catch (_error) {
      // Nothing kept.
    }
  }

  // A kept upload's state on the server, or null when it is gone (expired, deleted, finished
  // and forgotten) or unreachable: then a new upload starts, which is always correct.
  async function resumedStatus(state, file) {
    const url = recallUpload(state, file);
    if (!url) return null;
    state.url = url;
    try {
      return await tusHead(state);
    } catch (_error) {
      if (state.cancelled) throw cancelledError();
      forgetUpload(file);
      state.url = null;
      return null;
    }
  }

  // Give the server's bytes back; once is enough, and a failure only leaves them to expire.
  // It uses the credentials the upload started with: signing out cancels after `session` is gone.
  function tusTerminate(state) {
    if (state.file) forgetUpload(state.file);
    if (!state.url || state.terminated) return;
    state.terminated = true;
    api(state.url, {method: "DELETE", headers: {"Tus-Resumable": TUS_VERSION}}, state.auth).catch(
      () => {},
    );
  }

  // The upload's URL: a kept one the server still has (and its offset), else a new one.
  async function tusStart(state, file, fields) {
    const resumed = await resumedStatus(state, file);
    if (resumed) return resumed;
    try {
      state.url = await tusCreate(state, file, fields);
    } catch (error) {
      throw state.cancelled ? cancelledError() : error;
    }
    keepUpload(state, file);
    return {offset: 0, location: null};
  }

  async function tusRun(state, file, fields, onProgress) {
    const start = await tusStart(state, file, fields);
    if (state.cancelled) {
      tusTerminate(state); // Cancel came while the POST or HEAD was on its way
      throw cancelledError();
    }
    let location = start.location; // a kept upload may have finished before the reload
    try {
      if (!location) {
        onProgress(start.offset, file.size);
        location = await tusSend(state, file, onProgress, start.offset);
      }
    } catch (error) {
      // Kept, a re-drop of the file resumes it; otherwise nothing will: free the bytes now.
      if (!state.remember || state.cancelled) tusTerminate(state);
      throw error;
    }
    forgetUpload(file);
    const response = await api(location, {}, state.auth);
    return response.json();
  }

  function tusTransport({file, fields, onProgress}) {
    const state = {
      auth: session,
      remember: remembered,
      file,
      url: null,
      xhr: null,
      abort: new AbortController(),
      cancelled: false,
      lastOffset: 0,
    };
    const promise = tusRun(state, file, fields, onProgress);
    const cancel = () => {
      if (state.cancelled) return;
      state.cancelled = true;
      state.abort.abort();
      if (state.xhr) state.xhr.abort();
      clearTimeout(state.timer);
      if (state.wake) state.wake();
      tusTerminate(state);
    };
    return {promise, cancel};
  }

  const transports = {multipart: multipartTransport, tus: tusTransport};

  async function chooseTransport(file) {
    if (file.size > TUS_SETTINGS.threshold && (await serverSpeaksTus())) return transports.tus;
    return transports.multipart;
  }

  function selectFile(file) {
    pendingFile = file || null;
    if (pendingFile) {
      $("drop-text").textContent = pendingFile.name + " (" + formatBytes(pendingFile.size) + ")";
    } else {
      $("drop-text").replaceChildren("Drop a file here or ", el("u", {}, "choose one"));
    }
    $("drop-zone").classList.toggle("has-file", Boolean(pendingFile));
    $("upload-form").classList.toggle("has-file", Boolean(pendingFile));
    $("upload-submit").disabled = !pendingFile || Boolean(currentUpload);
  }

  function setProgress(loaded, total, note) {
    const percent = total ? Math.floor((loaded / total) * 100) : 0;
    $("upload-progress").value = percent;
    $("upload-progress-text").textContent =
      percent + "% · " + formatBytes(loaded) + " of " + formatBytes(total) +
      (note === "resuming" ? " · connection lost, resuming…" : "");
  }

  async function startUpload() {
    if (!pendingFile || currentUpload || !session) return;
    const file = pendingFile;
    const fields = {public: $("upload-public").checked ? "true" : "false"};
    const title = $("upload-title-input").value.trim();
    if (title) fields.title = title;
    show($("upload-progress-row"), true);
    show($("upload-cancel"), true);
    $("upload-submit").disabled = true;
    setProgress(0, file.size);
    // Until the transport is chosen (the first large file asks the server), Cancel just marks it.
    const choosing = {cancelled: false, cancel: () => (choosing.cancelled = true)};
    currentUpload = choosing;
    try {
      const transport = await chooseTransport(file);
      if (choosing.cancelled) throw cancelledError();
      currentUpload = transport({file, fields, onProgress: setProgress});
      const item = await currentUpload.promise;
      setProgress(file.size, file.size);
      notice("Uploaded " + displayName(item) + ".", "success");
      $("upload-title-input").value = "";
      $("file-input").value = "";
      pendingFile = null;
      loadPage(0);
    } catch (error) {
      if (error instanceof ApiError && error.problem.cancelled) notice("Upload cancelled.", "info");
      else failed(error);
    } finally {
      currentUpload = null;
      show($("upload-cancel"), false);
      show($("upload-progress-row"), false);
      selectFile(pendingFile);
    }
  }

  // ---- edit ----------------------------------------------------------------------------------

  const TEXT_FIELDS = ["title", "description", "metadata_primary", "metadata_secondary", "mime_type"];

  function openEdit(item) {
    editing = item;
    const form = $("edit-form");
    for (const name of TEXT_FIELDS) form.elements[name].value = item[name] || "";
    form.elements.max_downloads_allowed.value = String(item.max_downloads_allowed || 0);
    form.elements.public.checked = Boolean(item.public);
    $("edit-subject").textContent = item.original_file_name || item.id;
    fieldError("edit-error", "");
    $("edit-dialog").showModal();
    $("edit-title-input").focus();
  }

  function editChanges(form, item) {
    const changes = {};
    for (const name of TEXT_FIELDS) {
      const value = form.elements[name].value;
      const before = item[name] || "";
      if (value !== before) changes[name] = value === "" && name !== "mime_type" ? null : value;
    }
    const limitText = form.elements.max_downloads_allowed.value.trim();
    const limit = limitText === "" ? 0 : Number(limitText);
    if (!Number.isInteger(limit) || limit < 0) return {error: "The download limit is a whole number ≥ 0."};
    if (limit !== (item.max_downloads_allowed || 0)) changes.max_downloads_allowed = limit;
    if (form.elements.public.checked !== Boolean(item.public)) {
      changes.public = form.elements.public.checked;
    }
    return {changes};
  }

  async function saveEdit() {
    const item = editing;
    if (!item) return;
    const {changes, error} = editChanges($("edit-form"), item);
    if (error) {
      fieldError("edit-error", error);
      return;
    }
    if (!Object.keys(changes).length) {
      $("edit-dialog").close();
      return;
    }
    $("edit-save").disabled = true;
    try {
      const response = await api(API + "/" + encodeURIComponent(item.id) + "/info", {
        method: "PUT",
        headers: {"Content-Type": "application/json", Prefer: "return=representation"},
        body: JSON.stringify(changes),
      });
      const updated = await response.json();
      $("edit-dialog").close();
      replaceItem(updated);
      notice("Saved " + displayName(updated) + ".", "success");
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) $("edit-dialog").close();
      failed(error, "edit-error");
    } finally {
      $("edit-save").disabled = false;
    }
  }

  // ---- delete --------------------------------------------------------------------------------

  function openDelete(item) {
    deleting = item;
    $("delete-subject").textContent = displayName(item);
    fieldError("delete-error", "");
    $("delete-dialog").showModal();
    $("delete-cancel").focus();
  }

  async function confirmDelete() {
    const item = deleting;
    if (!item) return;
    $("delete-confirm").disabled = true;
    try {
      await api(API + "/" + encodeURIComponent(item.id), {method: "DELETE"});
      $("delete-dialog").close();
      notice("Deleted " + displayName(item) + ".", "success");
      loadPage(pageIndex);
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) {
        $("delete-dialog").close();
        notice("It was already gone.", "info");
        loadPage(pageIndex);
      } else {
        if (error instanceof ApiError && error.status === 401) $("delete-dialog").close();
        failed(error, "delete-error");
      }
    } finally {
      $("delete-confirm").disabled = false;
    }
  }

  // ---- wiring --------------------------------------------------------------------------------

  function onSubmit(id, handler) {
    $(id).addEventListener("submit", (event) => {
      event.preventDefault();
      handler();
    });
  }

  function wire() {
    const signInForm = $("sign-in-form");
    for (const radio of signInForm.elements.mode) {
      radio.addEventListener("change", () => {
        const jwt = signInForm.elements.mode.value === "jwt";
        show($("basic-fields"), !jwt);
        show($("jwt-fields"), jwt);
      });
    }
    onSubmit("sign-in-form", () => {
      const candidate = credentialsFromForm();
      if (candidate.error) fieldError("sign-in-error", candidate.error);
      else signIn(candidate, $("remember").checked);
    });
    $("sign-out").addEventListener("click", signOut);

    onSubmit("search-form", startSearch);
    $("prev-page").addEventListener("click", () => loadPage(Math.max(0, pageIndex - 1)));
    $("next-page").addEventListener("click", () => loadPage(pageIndex + 1));

    const zone = $("drop-zone");
    $("file-input").addEventListener("change", (event) => selectFile(event.target.files[0]));
    for (const type of ["dragenter", "dragover"]) {
      zone.addEventListener(type, (event) => {
        event.preventDefault();
        zone.classList.add("dragging");
      });
    }
    for (const type of ["dragleave", "dragend"]) {
      zone.addEventListener(type, () => zone.classList.remove("dragging"));
    }
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("dragging");
      const files = event.dataTransfer && event.dataTransfer.files;
      if (files && files.length) selectFile(files[0]);
    });
    // A file dropped beside the zone must not make the browser navigate away to it.
    for (const type of ["dragover", "drop"]) {
      window.addEventListener(type, (event) => event.preventDefault());
    }
    onSubmit("upload-form", startUpload);
    $("upload-cancel").addEventListener("click", () => currentUpload && currentUpload.cancel());

    onSubmit("edit-form", saveEdit);
    $("edit-cancel").addEventListener("click", () => $("edit-dialog").close());
    onSubmit("delete-form", confirmDelete);
    $("delete-cancel").addEventListener("click", () => $("delete-dialog").close());
    $("edit-dialog").addEventListener("close", () => (editing = null));
    $("delete-dialog").addEventListener("close", () => (deleting = null));
  }

  wire();
  const saved = restoredSession();
  if (saved) {
    $("remember").checked = true;
    signIn(saved, true).then((ok) => ok || saveSession(false));
  } else {
    $("api-key").focus();
  }
  document.body.dataset.ready = "true";
})();
