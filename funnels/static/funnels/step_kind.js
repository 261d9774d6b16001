"use strict";
// Funnel steps in the admin: show only the fields of each step's kind, and give a new
// step the next position. Without this script every field is shown and still works.
(function () {
  const data = document.getElementById("funnel-step-kind-columns");
  if (!data) {
    return;
  }
  const columnsByKind = JSON.parse(data.textContent);
  const allColumns = new Set(Object.values(columnsByKind).flat());

  function showFieldsOfKind(step) {
    const select = step && step.querySelector('select[name$="-kind"]');
    if (!select) {
      return;
    }
    const shown = new Set(columnsByKind[select.value] || []);
    for (const column of allColumns) {
      for (const row of step.querySelectorAll(".form-row.field-" + column)) {
        row.style.display = shown.has(column) ? "" : "none";
      }
    }
  }

  function nextPosition() {
    let highest = 0;
    for (const input of document.querySelectorAll('input[name^="steps-"][name$="-position"]')) {
      const value = parseInt(input.value, 10);
      if (!Number.isNaN(value) && value > highest) {
        highest = value;
      }
    }
    return highest + 1;
  }

  document.addEventListener("change", function (event) {
    if (event.target.matches('select[name$="-kind"]')) {
      showFieldsOfKind(event.target.closest(".inline-related"));
    }
  });

  document.addEventListener("formset:added", function (event) {
    const step = event.target;
    const position = step.querySelector('input[name$="-position"]');
    if (position && !position.value) {
      position.value = nextPosition();
    }
    showFieldsOfKind(step);
  });

  function init() {
    document.querySelectorAll(".inline-related").forEach(showFieldsOfKind);
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
