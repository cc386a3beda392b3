// The dashboard's terminal: xterm.js tabs, each a WebSocket to a shell in the session's
// sandbox. Binary frames carry the terminal's bytes; {"resize": [cols, rows]} its size.
"use strict";

(function () {
  const root = document.getElementById("terminals");
  if (!root) return;
  const tabs = root.querySelector(".tabs");
  const panes = root.querySelector(".panes");
  const newTab = document.getElementById("new-tab");
  const encoder = new TextEncoder();
  let count = 0;

  function show(id) {
    for (const el of root.querySelectorAll("[data-tab]")) {
      el.classList.toggle("active", el.dataset.tab === id);
    }
  }

  function open() {
    count += 1;
    const id = String(count);
    const tab = document.createElement("button");
    tab.type = "button";
    tab.className = "tab";
    tab.dataset.tab = id;
    tab.textContent = "Shell " + id;
    tab.addEventListener("click", () => show(id));
    tabs.insertBefore(tab, newTab);
    const pane = document.createElement("div");
    pane.className = "pane";
    pane.dataset.tab = id;
    panes.appendChild(pane);
    show(id);

    const term = new Terminal({
      cursorBlink: true,
      fontFamily: "ui-monospace, Menlo, Consolas, 'DejaVu Sans Mono', monospace",
      fontSize: 13,
    });
    const fit = new FitAddon.FitAddon();
    term.loadAddon(fit);
    term.open(pane);
    fit.fit();

    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + location.host + root.dataset.socket);
    socket.binaryType = "arraybuffer";
    const send = (data) => { if (socket.readyState === WebSocket.OPEN) socket.send(data); };
    socket.addEventListener("open", () => {
      send(JSON.stringify({ resize: [term.cols, term.rows] }));
      term.focus();
    });
    socket.addEventListener("message", (event) => {
      term.write(typeof event.data === "string" ? event.data : new Uint8Array(event.data));
    });
    socket.addEventListener("close", () => {
      term.write("\r\n[the shell has ended]\r\n");
      tab.classList.add("closed");
    });
    term.onData((data) => send(encoder.encode(data)));
    term.onResize(({ cols, rows }) => send(JSON.stringify({ resize: [cols, rows] })));
    window.addEventListener("resize", () => { if (pane.classList.contains("active")) fit.fit(); });
    tab.addEventListener("click", () => { fit.fit(); term.focus(); });
  }

  newTab.addEventListener("click", open);
  open();
})();
