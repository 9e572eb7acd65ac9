// dcpulse console: applies each server-sent update to the page. Everything received is set with
// textContent or as a class name: nothing is ever parsed as markup.
"use strict";

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function linkCell(row, text, href) {
  const td = document.createElement("td");
  const a = document.createElement("a");
  a.textContent = text;
  a.href = href;
  td.appendChild(a);
  row.appendChild(td);
}

function fill(id, items, build, empty) {
  const body = document.getElementById(id);
  if (!body) return;
  const rows = items.map((item) => { const tr = document.createElement("tr"); build(tr, item); return tr; });
  if (!rows.length && empty) { const tr = document.createElement("tr"); cell(tr, empty).colSpan = 12; rows.push(tr); }
  body.replaceChildren(...rows);
}

function alertRow(withSite) {
  return (tr, a) => {
    tr.className = a.severity;
    [a.severity, a.alertname].forEach((t) => cell(tr, t));
    if (withSite) cell(tr, a.site);
    [a.where, a.since, a.cause, a.suppressed_by, a.suppresses, a.summary].forEach((t) => cell(tr, t));
  };
}

function historyRow(withSite) {
  return (tr, h) => {
    cell(tr, h.at); cell(tr, h.alertname);
    if (withSite) cell(tr, h.site);
    [h.where, h.change, h.suppressed].forEach((t) => cell(tr, t));
  };
}

const SVG = "http://www.w3.org/2000/svg";

function spark(s) {
  // Numbers only go into attributes (the server computed them); no text from telemetry here.
  const td = document.createElement("td");
  const svg = document.createElementNS(SVG, "svg");
  const t = s.trend;
  ["width", "height"].forEach((k) => svg.setAttribute(k, t[k]));
  svg.setAttribute("viewBox", "0 0 " + t.width + " " + t.height);
  svg.setAttribute("class", "spark");
  const line = document.createElementNS(SVG, "line");
  const y = t.target_y == null ? -1 : t.target_y;
  [["class", "target"], ["x1", 0], ["x2", t.width], ["y1", y], ["y2", y]].forEach(([k, v]) => line.setAttribute(k, v));
  const poly = document.createElementNS(SVG, "polyline");
  poly.setAttribute("class", s.cls);
  poly.setAttribute("points", t.points);
  svg.append(line, poly);
  td.appendChild(svg);
  return td;
}

const apply = {
  national(data) {
    fill("sites", data.sites, (tr, s) => {
      linkCell(tr, s.site, "/site/" + encodeURIComponent(s.site));
      cell(tr, s.pue_now, s.cls); cell(tr, s.pue_24h); tr.appendChild(spark(s)); cell(tr, s.target);
      cell(tr, s.verdict, s.cls);
      [s.it_kw, s.cooling_kw, s.critical, s.warning, s.info].forEach((t) => cell(tr, t));
    }, "No site has results in the last 24 hours.");
  },
  site(data) {
    document.querySelectorAll("[data-rack]").forEach((el) => {
      const r = data.racks[el.dataset.rack] || { cls: "none", value: "" };
      el.className = "rack " + r.cls;
      el.querySelector(".v").textContent = r.value;
    });
    const hot = document.getElementById("hottest");
    if (hot && data.hottest.rack) {
      hot.textContent = data.hottest.rack;
      hot.href = location.pathname + "/rack/" + encodeURIComponent(data.hottest.rack);
    }
    const inlet = document.getElementById("hottest-inlet");
    if (inlet) inlet.textContent = data.hottest.inlet;
    fill("alerts", data.alerts, alertRow(false), "Nothing is firing.");
  },
  rack(data) {
    fill("servers", data.servers, (tr, s) => {
      [s.device, s.power, s.inlet].forEach((t) => cell(tr, t));
      const td = cell(tr, "");
      s.accelerators.forEach((a) => {
        const span = document.createElement("span");
        span.className = "acc " + a.cls; span.title = a.name; span.textContent = a.temp + " · " + a.util;
        td.appendChild(span);
      });
    }, "No server sample in the last 5 minutes.");
    fill("coolant", data.coolant, (tr, c) => [c.at, c.supply, c.return, c.flow].forEach((t) => cell(tr, t)));
    fill("history", data.history, historyRow(false));
  },
  alerts(data) {
    fill("active", data.active, alertRow(true), "Nothing is firing.");
    fill("history", data.history, historyRow(true));
  },
};

function connect() {
  const body = document.body;
  const live = document.getElementById("live");
  const view = apply[body.dataset.view];
  if (!view || !body.dataset.stream) return;
  const source = new EventSource(body.dataset.stream);
  source.onmessage = (event) => {
    view(JSON.parse(event.data));
    live.textContent = "live · " + new Date().toLocaleTimeString();
    live.className = "live ok";
  };
  source.addEventListener("trouble", (event) => {
    live.textContent = "InfluxDB not answering: " + JSON.parse(event.data).error;
    live.className = "live bad";
  });
  source.onerror = () => { live.textContent = "disconnected, retrying…"; live.className = "live bad"; };
}

document.addEventListener("DOMContentLoaded", () => {
  const metric = document.getElementById("metric");
  if (metric) metric.addEventListener("change", () => metric.form.submit());
  connect();
});
