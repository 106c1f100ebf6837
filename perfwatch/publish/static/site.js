// perfwatch publish: renders each page from its JSON data block. Every string from the data is set as text
// (createTextNode / textContent), never as HTML; strings handed to plotly.js are entity-escaped first, since
// plotly reads its labels as a small markup language. Links are only the site's own pages and the commit
// URL template the publisher gave (an http(s) URL, checked again here).
"use strict";

(function () {
  const data = JSON.parse(document.getElementById("perfwatch-data").textContent);
  const root = document.body.dataset.root || "";
  const app = document.getElementById("app");
  const TIME = [[1, "s"], [1e-3, "ms"], [1e-6, "µs"], [1e-9, "ns"]];
  const BYTES = [[2 ** 30, "GiB"], [2 ** 20, "MiB"], [2 ** 10, "KiB"], [1, "B"]];
  // A longer series is drawn as its line and bars without a marker per commit (they would overlap into a line
  // anyway; hover and click still reach every commit): 5,000 markers cost a benchmark page about 0.2 s to draw.
  const MARKERS = 400;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined && value !== false) node.setAttribute(name, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.appendChild(typeof child === "string" || typeof child === "number"
        ? document.createTextNode(String(child)) : child);
    }
    return node;
  }

  // Text for plotly.js labels: its markup is HTML-like, so the data's < > & are given as entities.
  function pt(text) {
    return String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }

  function fmt(value, unit) {
    if (value === null || value === undefined || !isFinite(value)) return "-";
    const scales = unit === "seconds" ? TIME : unit === "bytes" ? BYTES : null;
    if (scales) {
      const [scale, suffix] = scales.find(([s]) => Math.abs(value) >= s) || scales[scales.length - 1];
      return `${Number((value / scale).toPrecision(4))} ${suffix}`;
    }
    return `${Number(value.toPrecision(4))}${unit && unit !== "unitless" ? " " + unit : ""}`;
  }

  function pct(change) {
    return change === null || change === undefined ? "" : `${change >= 0 ? "+" : ""}${(change * 100).toFixed(1)}%`;
  }

  function short(commit) {
    return commit ? commit.slice(0, 10) : "-";
  }

  function commitUrl(commit) {
    const template = data.commit_url;
    if (!template || !commit || !/^https?:\/\//.test(template)) return null;
    return template.split("{commit}").join(encodeURIComponent(commit));
  }

  function commitNode(commit) {
    const url = commitUrl(commit);
    return url ? el("a", { href: url, rel: "noopener noreferrer", class: "commit" }, short(commit))
      : el("span", { class: "commit" }, short(commit));
  }

  function notesList(notes) {
    if (!notes || !notes.length) return null;
    return el("ul", { class: "notes" }, ...notes.map((n) => el("li", null, n)));
  }

  function table(headers, rows, id) {
    const head = el("tr", null, ...headers.map((h) => el("th", { "data-key": h.key || null }, h.label || h)));
    return el("table", { id: id || null }, el("thead", null, head), el("tbody", null, ...rows));
  }

  // ------------------------------------------------------------ summary

  function sparkline(values) {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("class", "spark");
    svg.setAttribute("viewBox", "0 0 120 24");
    const finite = values.filter((v) => v !== null);
    if (finite.length) {
      const lo = Math.min(...finite), hi = Math.max(...finite), span = hi - lo || 1;
      const step = values.length > 1 ? 118 / (values.length - 1) : 0;
      let segment = [];
      const flush = () => {
        if (segment.length === 1) {  // a lone point: a dot
          const [cx, cy] = segment[0].split(",");
          const dot = document.createElementNS(ns, "circle");
          dot.setAttribute("cx", cx);
          dot.setAttribute("cy", cy);
          dot.setAttribute("r", "1.8");
          svg.appendChild(dot);
        } else if (segment.length) {
          const line = document.createElementNS(ns, "polyline");
          line.setAttribute("points", segment.join(" "));
          svg.appendChild(line);
        }
        segment = [];
      };
      values.forEach((v, i) => {
        if (v === null) { flush(); return; }
        segment.push(`${(1 + i * step).toFixed(1)},${(22 - ((v - lo) / span) * 20).toFixed(1)}`);
      });
      flush();
    }
    return svg;
  }

  function summaryPage() {
    const rows = data.rows;
    app.appendChild(el("h1", null, "Benchmarks"));
    app.appendChild(el("p", { class: "lead" }, `${rows.length} benchmark series from ${data.runs} runs on ` +
      `${data.machines} machine(s); regressions first.`));
    const notes = notesList(data.notes);
    if (notes) app.appendChild(notes);
    const choices = (field) => [...new Set(rows.map((r) => r[field]))].filter((v) => v !== "").sort();
    const select = (id, label, values) => el("label", null, label + " ",
      el("select", { id }, el("option", { value: "" }, "all"), ...values.map((v) => el("option", { value: v }, v))));
    const filters = el("div", { class: "filters" },
      el("label", null, "name ", el("input", { id: "filter-name", type: "search", placeholder: "filter by name" })),
      select("filter-suite", "suite", choices("suite")), select("filter-machine", "machine", choices("machine")),
      select("filter-verdict", "verdict", choices("verdict")), el("span", { id: "shown" }));
    app.appendChild(filters);
    // The baseline file's verdict, where the publisher gave one: one process days away, so unpaired.
    const withBaseline = rows.some((r) => r.baseline);
    rows.forEach((r) => { r.baseline_change = r.baseline ? r.baseline.change : null; });
    function baselineCell(b) {
      if (!b) return el("td", { class: "dim" }, "-");
      const tone = { regressed: "worse", improved: "better" }[b.verdict] || "";
      return el("td", { class: `num ${tone}`, title: `${b.reason} (baseline ${b.run_id})` },
        b.change === null ? el("span", { class: "dim" }, "not compared") : `${pct(b.change)} ${b.verdict}`);
    }
    const trs = rows.map((r) => {
      const steps = r.steps.length
        ? el("span", null, ...r.steps.map((s) => el("span", { class: s.worse ? "worse" : "better" }, pct(s.change) + " ")))
        : el("span", { class: "dim", title: r.history_note }, r.history_note ? "too few commits yet" : "none");
      const name = el("td", null, el("a", { href: root + r.page }, r.name), notesList(r.notes));
      const tr = el("tr", { class: `verdict-${r.verdict}` }, name, el("td", null, r.suite), el("td", { class: "nowrap" }, r.machine),
        el("td", { class: "num", title: r.unit }, r.latest_text), el("td", { class: `num ${{ regressed: "worse", improved: "better" }[r.verdict] || ""}` }, pct(r.change)),
        el("td", { title: r.reason }, el("span", { class: `verdict v-${r.verdict}` }, r.verdict)),
        ...(withBaseline ? [baselineCell(r.baseline)] : []),
        el("td", null, steps), el("td", null, sparkline(r.spark)));
      tr.row = r;
      return tr;
    });
    const headers = [{ key: "name", label: "benchmark" }, { key: "suite", label: "suite" },
      { key: "machine", label: "machine" }, { key: "latest", label: "latest" },
      { key: "change", label: "vs previous commit" }, { key: "verdict", label: "verdict" },
      ...(withBaseline ? [{ key: "baseline_change", label: "vs baseline (unpaired)" }] : []),
      "change points", "history"];
    const tbl = table(headers, trs, "summary");
    app.appendChild(tbl);
    const body = tbl.tBodies[0];
    const inputs = ["filter-name", "filter-suite", "filter-machine", "filter-verdict"].map((id) => document.getElementById(id));
    function apply() {
      const [name, suite, machine, verdict] = inputs.map((i) => i.value);
      let shown = 0;
      for (const tr of trs) {
        const r = tr.row;
        tr.hidden = !((!name || r.name.toLowerCase().includes(name.toLowerCase())) && (!suite || r.suite === suite) &&
          (!machine || r.machine === machine) && (!verdict || r.verdict === verdict));
        shown += tr.hidden ? 0 : 1;
      }
      document.getElementById("shown").textContent = `${shown} of ${trs.length} shown`;
    }
    inputs.forEach((i) => i.addEventListener("input", apply));
    let sorted = { key: null, up: true };
    tbl.tHead.addEventListener("click", (event) => {
      const key = event.target.dataset && event.target.dataset.key;
      if (!key) return;
      sorted = { key, up: sorted.key === key ? !sorted.up : true };
      const value = (tr) => tr.row[key];
      trs.sort((a, b) => {
        const x = value(a), y = value(b);
        if (x === y) return 0;
        if (x === null || x === undefined) return 1;
        if (y === null || y === undefined) return -1;
        return (x < y ? -1 : 1) * (sorted.up ? 1 : -1);
      });
      trs.forEach((tr) => body.appendChild(tr));
      for (const th of tbl.tHead.rows[0].cells) th.className = th.dataset.key === key ? (sorted.up ? "up" : "down") : "";
    });
    apply();
  }

  // ------------------------------------------------------------ a benchmark's page

  function label(t) {
    return t.params ? `${t.machine} · ${t.params}` : t.machine;
  }

  function benchmarkPage() {
    app.appendChild(el("h1", null, data.name));
    const units = [...new Set(data.traces.map((t) => t.unit))];
    app.appendChild(el("p", { class: "lead" }, `${data.traces.length} series (machine and parameters), ` +
      `${data.axis.length} commits; each point is the median of a commit's samples, its bars their interquartile range.`));
    const notes = data.traces.flatMap((t) => t.notes.map((n) => `${label(t)}: ${n}`));
    if (notes.length) app.appendChild(notesList(notes));
    const controls = el("div", { class: "filters" },
      el("label", null, el("input", { type: "radio", name: "x", value: "commit", id: "x-commit", checked: "" }), " by commit"),
      el("label", null, el("input", { type: "radio", name: "x", value: "date", id: "x-date" }), " by date"),
      el("label", null, el("input", { type: "checkbox", id: "log-scale" }), " log scale"));
    app.appendChild(controls);
    const chart = el("div", { id: "chart", class: "chart" });
    app.appendChild(chart);
    const picked = el("div", { id: "picked", class: "picked" }, "Click a point for its commit and runs.");
    app.appendChild(picked);

    function xOf(p, mode) { return mode === "date" ? p.date : p.x; }

    function traces(mode) {
      return data.traces.map((t) => {
        const pts = t.points;
        return {
          type: "scatter", mode: pts.length > MARKERS ? "lines" : "lines+markers", name: pt(label(t)), connectgaps: false,
          x: pts.map((p) => xOf(p, mode)), y: pts.map((p) => p.median),
          error_y: { type: "data", symmetric: false, thickness: 1,
            array: pts.map((p) => (p.median === null ? 0 : p.q3 - p.median)),
            arrayminus: pts.map((p) => (p.median === null ? 0 : p.median - p.q1)) },
          customdata: pts.map((p) => [pt(p.commit ? short(p.commit) : "no commit"), pt(p.date), pt(p.run_ids.join(", ")),
            pt(fmt(p.median, t.unit)), pt(`${fmt(p.q1, t.unit)} – ${fmt(p.q3, t.unit)}`), p.n]),
          hovertemplate: "commit %{customdata[0]}<br>%{customdata[1]}<br>run %{customdata[2]}<br>" +
            "median %{customdata[3]}<br>IQR %{customdata[4]}<br>n=%{customdata[5]}<extra>%{fullData.name}</extra>",
        };
      });
    }

    function layout(mode) {
      const shapes = [], annotations = [];
      for (const t of data.traces) {
        for (const s of t.steps) {
          const x = mode === "date" ? s.date : s.x - 0.5;
          const color = s.worse ? "#d62728" : "#2ca02c";
          shapes.push({ type: "line", xref: "x", yref: "paper", x0: x, x1: x, y0: 0, y1: 1, line: { color, dash: "dash", width: 1 } });
          annotations.push({ x, xref: "x", y: 1, yref: "paper", yanchor: "bottom", showarrow: false,
            font: { color, size: 11 }, text: pt(`${pct(s.change)} ${s.worse ? "worse" : "better"}`) });
        }
      }
      const every = Math.max(1, Math.ceil(data.axis.length / 30));
      const xaxis = mode === "date" ? { type: "date", title: { text: "commit date" } }
        : { type: "linear", title: { text: "commit" }, tickangle: -60, zeroline: false,
          tickvals: data.axis.map((_, i) => i).filter((i) => i % every === 0),
          ticktext: data.axis.filter((_, i) => i % every === 0).map((a) => pt(a.commit ? a.commit.slice(0, 7) : a.run_id)) };
      return { margin: { t: 40, r: 20, b: 90, l: 70 }, hovermode: "closest", shapes, annotations, xaxis,
        yaxis: { type: document.getElementById("log-scale").checked ? "log" : "linear", title: { text: pt(units.join(", ")) } },
        showlegend: true, legend: { orientation: "h", y: -0.35 } };
    }

    const config = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["sendDataToCloud"] };
    const mode = () => (document.getElementById("x-date").checked ? "date" : "commit");
    window.Plotly.newPlot(chart, traces("commit"), layout("commit"), config);
    for (const id of ["x-commit", "x-date", "log-scale"]) {
      document.getElementById(id).addEventListener("change", () => window.Plotly.react(chart, traces(mode()), layout(mode()), config));
    }
    chart.on("plotly_click", (event) => {
      const hit = event.points[0];
      const t = data.traces[hit.curveNumber], p = t.points[hit.pointIndex];
      picked.replaceChildren(el("strong", null, label(t)), " commit ", commitNode(p.commit), ` ${p.date} · run ${p.run_ids.join(", ")}` +
        ` · median ${fmt(p.median, t.unit)} · n=${p.n}`);
      const url = commitUrl(p.commit);
      if (url) window.open(url, "_blank", "noopener,noreferrer");
    });

    const pairs = data.traces.filter((t) => t.distribution);
    app.appendChild(el("h2", null, "The latest commit against the one before"));
    if (pairs.length) {
      const boxes = el("div", { id: "distribution", class: "chart small" });
      app.appendChild(boxes);
      const box = (t, side) => {
        const d = t.distribution[side];
        return { type: "box", name: pt(`${d.commit ? short(d.commit) : d.run_id} (${side})`), y: d.samples,
          legendgroup: pt(label(t)), boxpoints: "all", jitter: 0.4, pointpos: 0,
          x: d.samples.map(() => pt(label(t))), offsetgroup: side,
          marker: { color: side === "latest" ? "#1f77b4" : "#9ca3af" } };
      };
      // Below the history: drawn once the history chart is on screen, so that it does not wait for this one.
      requestAnimationFrame(() => setTimeout(() => window.Plotly.newPlot(boxes,
        pairs.flatMap((t) => [box(t, "previous"), box(t, "latest")]),
        { boxmode: "group", margin: { t: 20, r: 20, b: 60, l: 70 }, showlegend: false,
          yaxis: { title: { text: pt(units.join(", ")) } } }, config)));
    } else {
      app.appendChild(el("p", { class: "dim" }, "Fewer than two commits measured."));
    }

    const steps = data.traces.flatMap((t) => t.steps.map((s) => el("tr", { class: s.worse ? "worse" : "better" },
      el("td", null, label(t)), el("td", null, commitNode(s.commit_before), " .. ", commitNode(s.commit)),
      el("td", { class: "num" }, `${fmt(s.before, t.unit)} → ${fmt(s.after, t.unit)}`),
      el("td", { class: "num" }, `${pct(s.change)} ${s.worse ? "worse" : "better"}`),
      el("td", { class: "num" }, s.p === null ? "-" : s.p.toPrecision(2)))));
    app.appendChild(el("h2", null, "Change points"));
    app.appendChild(steps.length ? table(["series", "between commits", "before → after", "change", "p"], steps, "steps")
      : el("p", { class: "dim" }, "No change point found."));
  }

  // ------------------------------------------------------------ regressions and machines

  function regressionsPage() {
    app.appendChild(el("h1", null, "Regressions"));
    app.appendChild(el("p", { class: "lead" }, "Every change point that made a benchmark worse, newest first " +
      "(also as an Atom feed, regressions.xml)."));
    const rows = data.rows.map((r) => el("tr", null, el("td", null, r.date),
      el("td", null, el("a", { href: root + r.page }, r.name)), el("td", null, r.machine),
      el("td", null, commitNode(r.commit_before), " .. ", commitNode(r.commit)),
      el("td", { class: "num" }, `${fmt(r.before, r.unit)} → ${fmt(r.after, r.unit)}`),
      el("td", { class: "num worse" }, pct(r.change)), el("td", { class: "num" }, r.p === null ? "-" : r.p.toPrecision(2))));
    app.appendChild(rows.length ? table(["date", "benchmark", "machine", "between commits", "before → after", "change", "p"],
      rows, "regressions") : el("p", { class: "dim" }, "No change point made anything worse."));
  }

  function sideBySide(machines) {
    const name = (m) => (m.host ? `${m.host} (${m.id})` : m.id);
    const pick = (id, chosen) => el("select", { id },
      ...machines.map((m, i) => el("option", { value: String(i), selected: i === chosen ? "" : null }, name(m))));
    const section = el("section", { id: "side-by-side" }, el("h2", null, "Latest runs side by side"),
      el("div", { class: "filters" }, pick("machine-a", 0), " against ", pick("machine-b", 1)));
    const holder = el("div");
    section.appendChild(holder);
    function draw() {
      const a = machines[Number(document.getElementById("machine-a").value)];
      const b = machines[Number(document.getElementById("machine-b").value)];
      const names = [...new Set([...Object.keys(a.latest), ...Object.keys(b.latest)])].sort();
      const rows = names.map((n) => {
        const x = a.latest[n], y = b.latest[n];
        const ratio = x && y && x.unit === y.unit && x.median && y.median !== null ? y.median / x.median : null;
        return el("tr", null, el("td", null, n), el("td", { class: "num" }, x ? fmt(x.median, x.unit) : "-"),
          el("td", { class: "num" }, y ? fmt(y.median, y.unit) : "-"),
          el("td", { class: "num" }, ratio === null ? "-" : `×${ratio.toPrecision(3)}`));
      });
      holder.replaceChildren(table(["benchmark", name(a), name(b), "second / first"], rows, "compare"));
    }
    section.addEventListener("change", draw);
    app.appendChild(section);
    draw();
  }

  function machinesPage() {
    app.appendChild(el("h1", null, "Machines"));
    if (!data.machines.length) app.appendChild(el("p", { class: "dim" }, "No runs stored yet."));
    if (data.machines.length > 1) sideBySide(data.machines);
    for (const m of data.machines) {
      const section = el("section", { class: "machine" }, el("h2", null, m.host ? `${m.host} (${m.id})` : m.id),
        el("p", { class: "lead" }, `${m.runs} run(s), ${m.first} to ${m.last}; the fingerprint of the latest, ${m.latest_run}:`),
        table(["field", "value"], m.fingerprint.map(([k, v]) => el("tr", null, el("td", null, k), el("td", null, v)))));
      app.appendChild(section);
    }
  }

  const pages = { summary: summaryPage, benchmark: benchmarkPage, regressions: regressionsPage, machines: machinesPage };
  pages[document.body.dataset.page]();
})();
