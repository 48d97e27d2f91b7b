/* Threadline web chat launcher: a button in a corner of the host's page that opens the chat
   in a panel. The host includes it with the token its server signed for the visitor:

     <script src="https://chat.example.com/webchat/launcher.js"
             data-token="SIGNED-TOKEN" async></script>

   data-gateway: where the chat is, when not where this script came from;
   data-position: "right" (default) or "left". The gateway must list the host's origin in
   THREADLINE_WEBCHAT_FRAME_ANCESTORS, or the browser refuses to show the chat in the panel.
   Styles are set as properties, never as markup, so a host's strict CSP does not block them. */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script || window.threadlineLauncher) return;
  var gateway = new URL(script.dataset.gateway || "..", script.src);  // the gateway's root
  if (!/\/$/.test(gateway.pathname)) gateway.pathname += "/";
  var token = script.dataset.token || "";
  var side = script.dataset.position === "left" ? "left" : "right";
  var phone = window.matchMedia("(max-width: 520px)");
  var button, panel, open = false;
  var SVG = "http://www.w3.org/2000/svg";  // a namespace name, nothing is fetched from it
  window.threadlineLauncher = { open: function () { show(true); },
                                close: function () { show(false); } };

  function set(element, styles) {
    Object.keys(styles).forEach(function (name) { element.style[name] = styles[name]; });
  }

  var ICON_OPEN = "M4 5h16v10H8l-4 4z", ICON_CLOSE = "M6 6l12 12M18 6L6 18";

  function icon(path) {
    var svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("width", "26");
    svg.setAttribute("height", "26");
    svg.setAttribute("aria-hidden", "true");
    var line = document.createElementNS(SVG, "path");
    line.setAttribute("d", path);
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", "currentColor");
    line.setAttribute("stroke-width", "2");
    line.setAttribute("stroke-linejoin", "round");
    line.setAttribute("stroke-linecap", "round");
    svg.append(line);
    return svg;
  }

  function makeButton() {
    button = document.createElement("button");
    button.type = "button";
    set(button, {
      position: "fixed", bottom: "20px", width: "56px", height: "56px", margin: "0",
      padding: "0", border: "0", borderRadius: "50%", background: "#2e59e6", color: "#ffffff",
      boxShadow: "0 4px 14px rgba(0, 0, 0, .25)", cursor: "pointer", zIndex: "2147483000",
      display: "flex", alignItems: "center", justifyContent: "center"
    });
    button.style[side] = "20px";
    button.addEventListener("click", function () { show(!open); });
    document.body.append(button);
  }

  // Made on the first open only: a page nobody chats on loads nothing from the gateway.
  function makePanel() {
    panel = document.createElement("iframe");
    panel.title = "Threadline chat";
    panel.id = "threadline-chat";
    panel.referrerPolicy = "no-referrer";
    // A fragment never reaches the gateway's logs; the page takes it out of its address.
    panel.src = new URL("chat?embed=1" + (token ? "#token=" + encodeURIComponent(token) : ""),
                        gateway).href;
    set(panel, { position: "fixed", border: "0", background: "#ffffff", zIndex: "2147483001" });
    document.body.append(panel);
    button.setAttribute("aria-controls", panel.id);
  }

  function layout() {
    if (!panel) return;
    if (phone.matches) {  // the whole screen; the chat's own close button gives it back
      set(panel, { top: "0", left: "0", right: "0", bottom: "0", width: "100%",
                   height: "100%", borderRadius: "0", boxShadow: "none" });
    } else {
      set(panel, { top: "auto", left: "auto", right: "auto", bottom: "88px", width: "380px",
                   height: "min(600px, calc(100% - 108px))", borderRadius: "14px",
                   boxShadow: "0 8px 30px rgba(0, 0, 0, .25)" });
      panel.style[side] = "20px";
    }
    button.style.display = open && phone.matches ? "none" : "flex";
  }

  function show(wanted) {
    open = wanted;
    if (open && !panel) makePanel();
    if (panel) panel.style.display = open ? "block" : "none";
    button.replaceChildren(icon(open ? ICON_CLOSE : ICON_OPEN));
    button.setAttribute("aria-label", open ? "Close chat" : "Open chat");
    button.setAttribute("aria-expanded", String(open));
    layout();
    if (open) panel.focus();
    else button.focus();
  }

  window.addEventListener("message", function (event) {
    // Only the chat in our panel may close it.
    if (!panel || event.source !== panel.contentWindow || event.origin !== gateway.origin) return;
    if (event.data && event.data.type === "threadline:close") show(false);
  });
  document.addEventListener("keydown", function (event) {
    if (open && event.key === "Escape") show(false);
  });
  phone.addEventListener("change", layout);

  function init() {
    makeButton();
    button.replaceChildren(icon(ICON_OPEN));
    button.setAttribute("aria-label", "Open chat");
    button.setAttribute("aria-expanded", "false");
  }

  if (document.body) init();
  else document.addEventListener("DOMContentLoaded", init);
})();
