// Keyboard shortcuts for the rating form, and one submission per page (the server also counts a vote once).
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("vote");
  if (!form) {
    return;
  }
  const buttons = Array.from(form.querySelectorAll("button[data-keys]"));
  const byKey = new Map();
  for (const button of buttons) {
    for (const key of button.dataset.keys.split(" ")) {
      byKey.set(key, button);
    }
  }
  let sent = false;
  form.addEventListener("submit", (event) => {
    if (sent) {
      event.preventDefault();
      return;
    }
    sent = true;
    // Disabled after this turn: the submission has taken the pressed button's value by then.
    setTimeout(() => buttons.forEach((button) => { button.disabled = true; }), 0);
  });
  document.addEventListener("keydown", (event) => {
    if (event.target instanceof HTMLTextAreaElement) {
      if (event.key === "Escape") {
        event.target.blur();
      }
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) {
      return;
    }
    const button = byKey.get(event.key);
    if (button && !sent) {
      event.preventDefault();
      form.requestSubmit(button);
    }
  });
});
