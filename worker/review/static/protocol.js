// The protocol worklist: a "Print this sheet" button per order prints that sheet alone (the
// other sheets are hidden while printing: protocol.css, body.print-one).
(function () {
  "use strict";
  function reset() {
    document.body.classList.remove("print-one");
    document.querySelectorAll("article.sheet.print-this").forEach(function (s) {
      s.classList.remove("print-this");
    });
  }
  window.addEventListener("afterprint", reset);
  document.addEventListener("click", function (event) {
    var button = event.target.closest("button.print-one");
    if (!button) return;
    var sheet = document.getElementById(button.getAttribute("data-sheet"));
    if (!sheet) return;
    reset();
    sheet.classList.add("print-this");
    document.body.classList.add("print-one");
    window.print();
  });
})();
