// Cordon dashboard: the little JavaScript the pages need. No framework, no build step.
"use strict";

// A [data-live] element is re-rendered by the server: each server-sent event carries the
// element's new HTML (escaped by the server's templates). EventSource reconnects by itself.
function follow(element) {
  const source = new EventSource(element.dataset.live);
  source.addEventListener("update", (event) => {
    element.innerHTML = event.data;
    element.dataset.updated = String(Date.now());
  });
  source.addEventListener("error", () => {
    element.classList.add("stale");
  });
  source.addEventListener("open", () => {
    element.classList.remove("stale");
  });
}

// Forms with data-confirm ask before they change something (stop a session, reload).
function confirmBeforeSubmit(form) {
  form.addEventListener("submit", (event) => {
    if (!window.confirm(form.dataset.confirm)) {
      event.preventDefault();
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-live]").forEach(follow);
  document.querySelectorAll("form[data-confirm]").forEach(confirmBeforeSubmit);
});
