// The console's only script: opens and closes the dialogs, keeps the
// Restart dialog's exit timeout for the mode that drains, and keeps a task
// page live from its server-sent events. Everything else is plain HTML.
"use strict";

document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("[data-dialog]").forEach(function (button) {
    button.addEventListener("click", function () {
      document.getElementById(button.dataset.dialog).showModal();
    });
  });
  document.querySelectorAll("dialog[data-open]").forEach(function (dialog) {
    dialog.showModal();
  });
  document.querySelectorAll("[data-close]").forEach(function (button) {
    button.addEventListener("click", function () {
      button.closest("dialog").close();
    });
  });

  // Only Restart (HOT) drains, so only it takes an exit timeout; a disabled
  // field is not sent.
  var hot = document.getElementById("mode-hot");
  var force = document.getElementById("mode-force");
  var exit = document.getElementById("exit_timeout");
  function syncExit() {
    if (exit) {
      exit.disabled = !(hot && hot.checked);
    }
  }
  [hot, force].forEach(function (radio) {
    if (radio) {
      radio.addEventListener("change", syncExit);
    }
  });
  syncExit();

  var panel = document.getElementById("task");
  if (panel && panel.dataset.events) {
    var source = new EventSource(panel.dataset.events);
    panel.dataset.live = "open";
    source.addEventListener("task", function (event) {
      panel.innerHTML = event.data;
    });
    source.addEventListener("end", function () {
      source.close();
      panel.dataset.live = "ended";
    });
    source.addEventListener("resync", function () {
      source.close();
      window.location.reload();
    });
  }
});
