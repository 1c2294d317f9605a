// Filters, search and pages over the report's cases, offline. The cases travel gzipped in #cases-data and are
// rendered with DOM calls and textContent only: model output never becomes markup.
(function () {
  "use strict";
  var meta = JSON.parse(document.getElementById("report-meta").textContent);
  var order = meta.order;
  var PAGE = 50;
  var records = [];
  var matches = [];
  var page = 0;
  var PAIRED = ["regression", "win", "both_fail", "both_pass"];

  function $(id) { return document.getElementById(id); }

  function el(tag, attrs) {
    var node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (key) {
        if (key === "class") { node.className = attrs[key]; } else { node.setAttribute(key, attrs[key]); }
      });
    }
    for (var i = 2; i < arguments.length; i++) {
      var child = arguments[i];
      if (child === null || child === undefined) { continue; }
      node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function fmtMs(ms) { return ms >= 1000 ? (ms / 1000).toFixed(2) + " s" : Math.round(ms) + " ms"; }

  function statusLabel(st) {
    return { pass: "pass", error: "error", "no answer": "no answer" }[st] || "fail";
  }

  // a gold value or a table cell: text as it is, any other JSON value pretty-printed
  function shown(value) {
    if (value === null || value === undefined) { return ""; }
    return typeof value === "string" ? value : JSON.stringify(value, null, 1);
  }

  async function load() {
    var node = $("cases-data");
    var binary = atob(node.textContent.trim());
    var bytes = new Uint8Array(binary.length);
    for (var i = 0; i < binary.length; i++) { bytes[i] = binary.charCodeAt(i); }
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    return JSON.parse(await new Response(stream).text());
  }

  function filters() {
    return {
      outcome: $("f-outcome").value,
      provider: $("f-provider").value,
      where: $("f-where").value,
      kind: $("f-kind").value,
      text: $("f-text").value.trim().toLowerCase()
    };
  }

  function haystack(r) {
    if (r._h === undefined) {
      var parts = [r.id, r.in || "", shown(r.gold)];
      order.forEach(function (p) { parts.push(r.o[p] || "", r.e[p] || ""); });
      r._h = parts.join("\n").toLowerCase();
    }
    return r._h;
  }

  function keep(r, f) {
    var providers = f.provider ? [f.provider] : order;
    if (f.outcome === "failing" && !providers.some(function (p) { return r.st[p] !== "pass"; })) { return false; }
    if (PAIRED.indexOf(f.outcome) >= 0) {
      var cat = r.cat || {};
      // outcomes are the candidates' against the incumbent: with the incumbent chosen, any candidate counts
      var candidates = f.provider && cat[f.provider] !== undefined ? [f.provider] : order.filter(function (c) {
        return cat[c] !== undefined;
      });
      if (!candidates.some(function (c) { return cat[c] === f.outcome; })) { return false; }
    }
    if (f.where && !providers.some(function (p) { return (r.w[p] || []).indexOf(f.where) >= 0; })) { return false; }
    if (f.kind && !providers.some(function (p) { return (r.k[p] || []).indexOf(f.kind) >= 0; })) { return false; }
    if (f.text && haystack(r).indexOf(f.text) < 0) { return false; }
    return true;
  }

  function card(r) {
    var title = el("h3", null, r.id + " ");
    order.forEach(function (p) {
      var st = r.st[p];
      title.appendChild(el("span", { "class": "tag " + (st === "pass" ? "ok" : "bad") }, p + ": " + statusLabel(st)));
    });
    order.forEach(function (c) {
      var v = (r.cat || {})[c];
      if (v === "regression" || v === "win") {
        title.appendChild(el("span", { "class": "tag " + (v === "win" ? "ok" : "bad") }, v + " (" + c + ")"));
      }
    });
    var box = el("div", { "class": "case", id: "case-" + r.id, "data-case-id": r.id }, title);
    box.appendChild(el("p", { "class": "meta" }, "DuckDB: ",
      el("code", null, "run_id = '" + meta.run_id + "' AND case_id = '" + r.id + "'"),
      r.line !== null ? " · cases file line " + r.line : null));
    if (r.in !== undefined && r.in !== null) {
      box.appendChild(el("details", null, el("summary", null, "Input"), el("pre", null, r.in)));
    }
    if (r.rows && r.rows.length) {
      var head = el("tr", null, el("th", null, "field"), el("th", null, "gold"));
      order.forEach(function (p) { head.appendChild(el("th", null, p)); });
      var table = el("table", null, head);
      r.rows.forEach(function (row) {
        var tr = el("tr", null, el("td", null, row[0]), el("td", null, shown(row[1])));
        row[2].forEach(function (cell) {
          tr.appendChild(el("td", { "class": cell[1] ? "ok" : "bad" }, shown(cell[0]),
            cell[1] ? null : " ", cell[1] ? null : el("span", { "class": "tag" }, cell[2] || "")));
        });
        table.appendChild(tr);
      });
      box.appendChild(table);
    } else if (r.gold !== undefined && r.gold !== null) {
      box.appendChild(el("p", null, "Gold: ", el("code", null, shown(r.gold))));
    }
    var outputs = el("div", { "class": "outputs" });
    order.forEach(function (p) {
      var div = el("div", null, el("b", null, p), r.lat[p] !== undefined ? el("span", { "class": "meta" }, " " + fmtMs(r.lat[p])) : null);
      if (r.e[p]) { div.appendChild(el("pre", { "class": "bad" }, "error: " + r.e[p])); }
      else if (r.o[p] === null || r.o[p] === undefined) { div.appendChild(el("pre", null, "(no answer recorded)")); }
      else { div.appendChild(el("pre", null, r.o[p])); }
      outputs.appendChild(div);
    });
    box.appendChild(outputs);
    return box;
  }

  function render() {
    var list = $("cases");
    while (list.firstChild) { list.removeChild(list.firstChild); }
    var pages = Math.max(1, Math.ceil(matches.length / PAGE));
    page = Math.min(Math.max(page, 0), pages - 1);
    var shown = matches.slice(page * PAGE, (page + 1) * PAGE);
    if (!shown.length) { list.appendChild(el("p", null, "No case matches these filters.")); }
    shown.forEach(function (r) { list.appendChild(card(r)); });
    $("shown-count").textContent = matches.length + (matches.length === 1 ? " case matches" : " cases match");
    $("page-info").textContent = "page " + (page + 1) + " of " + pages;
    $("page-prev").disabled = page === 0;
    $("page-next").disabled = page >= pages - 1;
  }

  function apply() {
    var f = filters();
    matches = records.filter(function (r) { return keep(r, f); });
    page = 0;
    render();
  }

  ["f-outcome", "f-provider", "f-where", "f-kind"].forEach(function (id) { $(id).addEventListener("change", apply); });
  $("f-text").addEventListener("input", apply);
  $("page-prev").addEventListener("click", function () { page -= 1; render(); });
  $("page-next").addEventListener("click", function () { page += 1; render(); });
  Array.prototype.forEach.call(document.querySelectorAll("[data-filter-outcome]"), function (link) {
    link.addEventListener("click", function () {
      $("f-outcome").value = link.getAttribute("data-filter-outcome");
      $("f-provider").value = link.getAttribute("data-filter-provider") || "";
      $("f-where").value = "";
      $("f-kind").value = "";
      $("f-text").value = "";
      apply();
    });
  });

  load().then(function (data) {
    records = data;
    $("nojs-note").hidden = true;
    document.body.setAttribute("data-cases-loaded", String(records.length));
    apply();
  }).catch(function (err) {
    $("nojs-note").textContent = "Could not read the cases in this page (" + err + "); the first failed cases are shown.";
  });
})();
