// Live updates from the console's server-sent events: new rows on the live page, a short notice
// elsewhere. No library: EventSource reconnects by itself (the stream says `retry: 5000`).
(function () {
  "use strict";
  var ticker = document.getElementById("ticker");
  var table = document.querySelector("#live tbody");
  if (!ticker && !table) { return; }
  var source = new EventSource("/events");
  function cell(row, text, code) {
    var td = document.createElement("td");
    if (code) { var c = document.createElement("code"); c.textContent = text; td.appendChild(c); }
    else { td.textContent = text; }
    row.appendChild(td);
  }
  source.addEventListener("platform", function (message) {
    var event = JSON.parse(message.data);
    if (table) {
      var row = document.createElement("tr");
      row.className = "new";
      cell(row, event.time); cell(row, event.topic, true); cell(row, event.key); cell(row, event.type); cell(row, event.summary);
      table.insertBefore(row, table.firstChild);
      while (table.children.length > 200) { table.removeChild(table.lastChild); }
    } else if (ticker) {
      var note = document.createElement("div");
      note.textContent = event.topic + " " + event.key + " " + event.summary;
      ticker.appendChild(note);
      setTimeout(function () { note.remove(); }, 8000);
      while (ticker.children.length > 4) { ticker.removeChild(ticker.firstChild); }
    }
  });
})();
