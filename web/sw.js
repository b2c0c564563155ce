// Cross-origin isolation on any static host. onnxruntime-web runs on several threads only in a
// cross-origin-isolated page (SharedArrayBuffer), which needs two response headers
// (Cross-Origin-Opener-Policy and Cross-Origin-Embedder-Policy) that a plain static server
// (python -m http.server, GitHub Pages, a bucket) does not send. This service worker puts them
// on the page's own responses; app.js registers it and reloads the page once, the page is then
// served through it. Cross-origin requests pass through untouched (the page makes none).
// Written for this page rather than vendored: the same idea as coi-serviceworker, in the lines
// this page needs, with nothing to configure.

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (new URL(request.url).origin !== self.location.origin) return;
  // Chromium refuses to answer an "only-if-cached" request outside same-origin mode (devtools' reloads).
  if (request.cache === "only-if-cached" && request.mode !== "same-origin") return;
  event.respondWith(fetch(request).then(isolated));
});

function isolated(response) {
  if (response.status === 0) return response; // opaque: its headers cannot be rewritten
  const headers = new Headers(response.headers);
  headers.set("Cross-Origin-Opener-Policy", "same-origin");
  headers.set("Cross-Origin-Embedder-Policy", "require-corp");
  headers.set("Cross-Origin-Resource-Policy", "same-origin");
  return new Response(response.body, { status: response.status, statusText: response.statusText, headers });
}
