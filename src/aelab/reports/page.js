// aelab's report page: builds the run (or comparison) page from the JSON that report_html.py inlines, and runs
// the model's decoder in the browser so that any point of the latent map can be decoded with no server.
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("aelab-data").textContent);
  const page = document.getElementById("page");
  const COLORS = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
                  "#9c755f", "#bab0ac"];
  window.aelab = { data: D };

  // -- small helpers ----------------------------------------------------------------------------------------

  function el(tag, props, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const kid of kids.flat(Infinity)) if (kid != null) e.append(kid);
    return e;
  }

  function fmt(v, digits) {
    if (typeof v !== "number") return String(v);
    if (Number.isInteger(v) && digits === undefined) return v.toLocaleString("en");
    const a = Math.abs(v);
    return v.toFixed(digits !== undefined ? digits : a >= 100 ? 2 : a >= 1 ? 3 : 4);
  }

  function floats(b64) {  // base64 little-endian float32 -> Float32Array
    const s = atob(b64), bytes = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) bytes[i] = s.charCodeAt(i);
    return new Float32Array(bytes.buffer);
  }

  function section(title, lead, ...kids) {
    return el("section", {}, el("h2", { text: title }), lead ? el("p", { class: "lead", text: lead }) : null, kids);
  }

  function hiDpi(canvas) {  // a crisp 2-d context at the canvas' displayed size
    const r = canvas.getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
    canvas.width = Math.round(r.width * dpr);
    canvas.height = Math.round(r.height * dpr);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    return [ctx, r.width, r.height];
  }

  const finite = (v) => typeof v === "number" && Number.isFinite(v);

  function niceTicks(lo, hi, count) {
    const span = hi - lo || 1, step0 = span / count, mag = Math.pow(10, Math.floor(Math.log10(step0)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= step0), first = Math.ceil(lo / step);
    const ticks = [];
    for (let i = 0; i <= 2 * count; i++) {  // counted, not summed: a step below the values' precision still ends
      const t = (first + i) * step;
      if (!(t <= hi + 1e-9 * span)) break;
      ticks.push(+t.toPrecision(12));
    }
    return ticks;
  }

  // -- the decoder, run in the page ------------------------------------------------------------------------
  // ops from report_html.decoder_program: linear (torch's (out, in) weight), relu, reshape, and the transposed
  // convolution with torch's (in, out, k, k) weight. Sums run in float64 over float32 weights; a sigmoid ends it.

  function makeDecoder(program) {
    const W = floats(program.weights);
    return function decode(z) {
      let x = Float64Array.from(z), shape = [x.length];
      for (const op of program.ops) {
        if (op.op === "linear") {
          const y = new Float64Array(op.out);
          for (let o = 0; o < op.out; o++) {
            let s = W[op.b + o];
            const row = op.w + o * op.in;
            for (let i = 0; i < op.in; i++) s += W[row + i] * x[i];
            y[o] = s;
          }
          x = y; shape = [op.out];
        } else if (op.op === "relu") {
          for (let i = 0; i < x.length; i++) if (x[i] < 0) x[i] = 0;
        } else if (op.op === "reshape") {
          shape = op.shape.slice();
        } else if (op.op === "convT") {
          const [, H, Wd] = shape, k = op.k, s = op.stride, p = op.pad;
          const Ho = (H - 1) * s - 2 * p + k, Wo = (Wd - 1) * s - 2 * p + k, plane = Ho * Wo;
          const y = new Float64Array(op.cout * plane);
          for (let o = 0; o < op.cout; o++) y.fill(W[op.b + o], o * plane, (o + 1) * plane);
          for (let i = 0; i < op.cin; i++) {
            for (let iy = 0; iy < H; iy++) {
              for (let ix = 0; ix < Wd; ix++) {
                const v = x[(i * H + iy) * Wd + ix];
                if (v === 0) continue;
                for (let o = 0; o < op.cout; o++) {
                  const w0 = op.w + (i * op.cout + o) * k * k, y0 = o * plane;
                  for (let ky = 0; ky < k; ky++) {
                    const oy = iy * s - p + ky;
                    if (oy < 0 || oy >= Ho) continue;
                    for (let kx = 0; kx < k; kx++) {
                      const ox = ix * s - p + kx;
                      if (ox >= 0 && ox < Wo) y[y0 + oy * Wo + ox] += v * W[w0 + ky * k + kx];
                    }
                  }
                }
              }
            }
          }
          x = y; shape = [op.cout, Ho, Wo];
        }
      }
      for (let i = 0; i < x.length; i++) x[i] = 1 / (1 + Math.exp(-x[i]));
      return x;
    };
  }

  function paint(canvas, pixels, shape) {  // (c, h, w) values in [0, 1] -> the canvas' own pixels
    const [c, h, w] = shape;
    canvas.width = w; canvas.height = h;
    const ctx = canvas.getContext("2d"), img = ctx.createImageData(w, h);
    for (let j = 0; j < h * w; j++) {
      for (let ch = 0; ch < 3; ch++) img.data[4 * j + ch] = Math.round(255 * pixels[(c === 1 ? 0 : ch) * h * w + j]);
      img.data[4 * j + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
  }

  function gaussian() {  // Box-Muller
    return Math.sqrt(-2 * Math.log(1 - Math.random())) * Math.cos(2 * Math.PI * Math.random());
  }

  function priorDraw(prior, dim) {  // as models/aae.py sample_prior; a VAE's prior is "normal"
    if (prior === "uniform") return Array.from({ length: dim }, () => 2 * Math.random() - 1);
    const z = Array.from({ length: dim }, () => (prior === "mixture" ? 0.5 : 1) * gaussian());
    if (prior === "mixture") {
      const angle = 2 * Math.PI * Math.floor(10 * Math.random()) / 10;
      z[0] += 2 * Math.cos(angle);
      z[1 % dim] += 2 * Math.sin(angle);
    }
    return z;
  }

  // -- loss charts ------------------------------------------------------------------------------------------

  // Each series' points are [epoch, value] for the epochs it was measured on (the eval-mode train series only every
  // few epochs): its line joins them. A value that is not a finite number is a gap in the line; a point with no
  // neighbour is a dot. The axes span the finite values only. data-drawn counts the points drawn.
  function lineChart(title, series, floor, xname = "epoch") {
    const canvas = el("canvas"), tip = el("div", { class: "tip" });
    const swatch = (color, style, name) => el("span", {},
      el("span", { class: "swatch", style: `border-color:${color};border-top-style:${style}` }), name);
    const box = el("div", { class: "chart" }, el("div", { class: "title", text: title }));
    const good = (p) => finite(p[0]) && finite(p[1]);
    const values = series.flatMap((s) => s.points.filter(good));
    if (!values.length) {
      box.dataset.drawn = 0;
      box.append(el("div", { class: "empty", text: "no epoch recorded a finite value for this chart" }));
      return box;
    }
    if (!finite(floor)) floor = null;
    box.append(canvas, el("div", { class: "legend" },
      series.map((s) => swatch(s.color, s.dash ? "dashed" : "solid", s.name)),
      floor != null ? swatch("#999", "dotted", "floor (test entropy)") : null), tip);
    const xs = [...new Set(values.map((p) => p[0]))].sort((a, b) => a - b);
    const ys = values.map((p) => p[1]).concat(floor != null ? [floor] : []);
    let ylo = ys.reduce((a, b) => Math.min(a, b)), yhi = ys.reduce((a, b) => Math.max(a, b));
    const pad = (yhi - ylo || Math.abs(yhi) || 1) * 0.06;
    ylo -= pad; yhi += pad;
    const xlo = xs[0] - (xs.length === 1 ? 0.5 : 0), xhi = xs[xs.length - 1] + (xs.length === 1 ? 0.5 : 0);
    const at = series.map((s) => new Map(s.points.filter(good)));  // epoch -> value, for hovering
    const m = { l: 54, r: 12, t: 8, b: 24 };
    let hover = null;

    function draw() {
      const [ctx, W, H] = hiDpi(canvas);
      const X = (x) => m.l + (x - xlo) / (xhi - xlo) * (W - m.l - m.r);
      const Y = (y) => m.t + (yhi - y) / (yhi - ylo) * (H - m.t - m.b);
      ctx.font = "11px system-ui, sans-serif";
      ctx.fillStyle = "#5f6b7a"; ctx.strokeStyle = "#edf0f4"; ctx.lineWidth = 1;
      ctx.textAlign = "right"; ctx.textBaseline = "middle";
      const digits = Math.min(12, Math.max(0, -Math.floor(Math.log10((yhi - ylo) / 4)) + 1));
      const big = Math.max(Math.abs(ylo), Math.abs(yhi)) >= 1e5;  // a diverged run's 1e23: too wide for the margin
      for (const t of niceTicks(ylo, yhi, 4)) {
        ctx.beginPath(); ctx.moveTo(m.l, Y(t)); ctx.lineTo(W - m.r, Y(t)); ctx.stroke();
        ctx.fillText(big ? (t ? t.toExponential(1) : "0") : fmt(t, digits), m.l - 6, Y(t));
      }
      ctx.textAlign = "center"; ctx.textBaseline = "top";
      for (const t of niceTicks(xlo, xhi, 6).filter((t) => xname !== "epoch" || Number.isInteger(t))) {
        ctx.fillText(t, X(t), H - m.b + 6);
      }
      if (floor != null) {
        ctx.strokeStyle = "#999"; ctx.setLineDash([2, 3]);
        ctx.beginPath(); ctx.moveTo(m.l, Y(floor)); ctx.lineTo(W - m.r, Y(floor)); ctx.stroke();
      }
      let drawn = 0;
      for (const s of series) {
        ctx.strokeStyle = ctx.fillStyle = s.color; ctx.lineWidth = 1.8; ctx.setLineDash(s.dash ? [5, 4] : []);
        const runs = [[]];  // stretches of finite values, split at each gap
        for (const p of s.points) {
          if (good(p)) runs[runs.length - 1].push(p); else if (runs[runs.length - 1].length) runs.push([]);
        }
        for (const run of runs) {
          if (run.length === 1) {
            ctx.beginPath(); ctx.arc(X(run[0][0]), Y(run[0][1]), 2.5, 0, 2 * Math.PI); ctx.fill();
          } else if (run.length > 1) {
            ctx.beginPath();
            run.forEach(([x, y], i) => (i ? ctx.lineTo(X(x), Y(y)) : ctx.moveTo(X(x), Y(y))));
            ctx.stroke();
          }
          drawn += run.length;
        }
      }
      box.dataset.drawn = drawn;
      ctx.setLineDash([]);
      if (hover != null) {
        const x = xs[hover];
        ctx.strokeStyle = "#9aa4b2"; ctx.lineWidth = 1;
        ctx.beginPath(); ctx.moveTo(X(x), m.t); ctx.lineTo(X(x), H - m.b); ctx.stroke();
        series.forEach((s, j) => {
          if (!at[j].has(x)) return;
          ctx.fillStyle = s.color;
          ctx.beginPath(); ctx.arc(X(x), Y(at[j].get(x)), 3.5, 0, 2 * Math.PI); ctx.fill();
        });
        tip.replaceChildren(el("div", { text: `${xname} ${xname === "epoch" ? x : fmt(x)}` }),
          series.map((s, j) => el("div", {},
            el("span", { class: "dot", style: `background:${s.color}` }),
            `${s.name}: ${at[j].has(x) ? fmt(at[j].get(x)) : "\u2014"}`)));
        tip.style.display = "block";
        const left = X(x) + 14, right = left + tip.offsetWidth > W;
        tip.style.left = (right ? X(x) - tip.offsetWidth - 6 : left) + "px";
        tip.style.top = "34px";
      } else tip.style.display = "none";
    }
    canvas.addEventListener("mousemove", (e) => {
      const r = canvas.getBoundingClientRect(), W = r.width;
      const x = xlo + (e.clientX - r.left - m.l) / (W - m.l - m.r) * (xhi - xlo);
      let best = 0;
      xs.forEach((v, i) => { if (Math.abs(v - x) < Math.abs(xs[best] - x)) best = i; });
      hover = best; draw();
    });
    canvas.addEventListener("mouseleave", () => { hover = null; draw(); });
    requestAnimationFrame(draw);
    window.addEventListener("resize", draw);
    return box;
  }

  // a measure's or loss term's name and what it says (aelab.reports.report.MEASURES); unknown keys as themselves
  const named = (key) => (D.names || {})[key] || [key, ""];

  function charts(history) {  // a chart per term that any epoch recorded; a series per split that measured it
    const keys = [...new Set(history.flatMap(Object.keys))];
    const terms = [...new Set(keys.filter((k) => /^(train|test)_/.test(k) && !k.startsWith("train_eval_"))
      .map((k) => k.split("_").slice(1).join("_")))].filter((t) => t !== "bce_floor" && t !== "sse_per_image");
    const splits = [["train", "train", "#2f6fdf", false], ["test", "test", "#e8773a", false],
                    ["train_eval", "train, eval mode", "#7f8da3", true]];
    const floor = history.map((r) => r.test_bce_floor).find(finite);
    return terms.map((term) => {
      const box = lineChart(named(term)[0],
        splits.filter(([split]) => keys.includes(`${split}_${term}`)).map(([split, name, color, dash]) => {
          const key = `${split}_${term}`;
          return { name, color, dash, points: history.filter((r) => key in r).map((r) => [r.epoch, r[key]]) };
        }),
        term === "bce" ? floor : null);
      box.querySelector(".title").title = named(term)[1];  // what it says, on hovering the name
      return box;
    });
  }

  // -- the run page -----------------------------------------------------------------------------------------

  function runPage() {
    const M = D.model, facts = D.facts, decode = D.decoder && makeDecoder(D.decoder), shape = M.shape;
    window.aelab.decode = decode;
    const seconds = facts.seconds;
    page.append(el("header", {},
      el("div", { class: "brand", text: "aelab run report" }),
      el("h1", { text: D.title }),
      el("div", { class: "facts" },
        el("span", {}, el("b", { text: M.class }), ` (${M.name})`),
        el("span", {}, el("b", { text: M.parameters.toLocaleString("en") }), " parameters"),
        el("span", {}, "code of ", el("b", { text: String(M.latent) }), " numbers"),
        el("span", {}, el("b", { text: String(facts.epochs) }), " epochs",
          finite(seconds) ? [" in ", el("b", { text: `${seconds.toFixed(0)} s` }),
            facts.epochs ? ` (${(seconds / facts.epochs).toFixed(2)} s per epoch)` : ""] : []),
        el("span", {}, el("b", { text: facts.test_images.toLocaleString("en") }), " test images")),
      el("div", { class: "doc", text: M.doc })));

    const measures = D.measures;
    page.append(section("Test measures", "On the whole test set after the last epoch.",
      el("div", { class: "cards" }, Object.entries(measures)
        .filter(([k, v]) => finite(v) && k !== "bce_floor")
        .map(([k, v]) => el("div", { class: "card", id: `measure-${k}` },
          el("div", { class: "k", text: named(k)[0] }),
          el("div", { class: "v", text: k.startsWith("psnr") ? `${v.toFixed(2)} dB` : fmt(v) }),
          el("div", { class: "n", text: k === "bce" && finite(measures.bce_floor)
            ? `floor ${fmt(measures.bce_floor)}: the pixels' own entropy` : named(k)[1] }))))));

    if (D.history.length) {
      page.append(section("Loss curves", "Hover a chart to read the values of every epoch. Train losses are averaged " +
        "over each epoch's batches as the weights moved; \u201ceval mode\u201d measures the finished epoch's weights.",
        el("div", { class: "charts", id: "charts" }, charts(D.history))));
    }
    if (D.grids) page.append(gridSection(D.grids));
    if (D.map) page.append(explorerSection(decode, shape));  // runs on vectors have no images to explore
    if (M.generative) page.append(samplesSection(decode, shape));
    if (D.anomaly) page.append(anomalySection(D.anomaly));
    for (const p of D.pictures) {
      page.append(section(p.title, null, el("div", { class: "picture" },
        el("img", { class: "pix", src: p.uri, alt: p.name, style: "width:min(100%, 560px)" }))));
    }
    if (D.contexts) {
      page.append(section("Top-activating contexts", D.contexts.title, el("div", { class: "contexts" },
        ...D.contexts.units.map((u) => el("div", { class: "unit" }, el("b", { text: `unit ${u.unit}` }),
          ...u.contexts.map((c) => el("div", { class: "context", title: `document ${c.document}, token ${c.position}` },
            el("span", { class: "v", text: c.value.toFixed(3) + "  " }), el("span", { text: c.before }),
            el("mark", { text: c.token }), el("span", { text: c.after }))))))));
    }
    page.append(section("Model and configuration", null,
      el("details", { open: "" }, el("summary", { text: "Layers" }), el("pre", { text: D.summary })),
      el("details", {}, el("summary", { text: "Configuration" }),
        el("pre", { text: JSON.stringify(D.config, null, 2) })),
      el("p", { class: "caption", text: `Run folder: ${D.run}. Rebuild this page with \`aelab report ${D.run}\`.` })));
  }

  // -- anomaly scores (`aelab score`) --------------------------------------------------------------------------

  const TRAIN_COLOR = "#2f6fdf", SCORED_COLOR = "#e8773a", THRESHOLD_COLOR = "#d62728";

  // The share of the training inputs (blue) and of the scored ones (orange) in each bin, side by side in it, and the
  // threshold as a red line. data-drawn counts the bars drawn (and 1 for the line).
  function histogramChart(A) {
    const canvas = el("canvas"), box = el("div", { class: "chart", id: "anomaly-histogram" },
      el("div", { class: "title", text: `${A.kind} score: % of each set` }), canvas,
      el("div", { class: "legend" }, [["training inputs", TRAIN_COLOR], ["scored inputs", SCORED_COLOR],
        ["threshold", THRESHOLD_COLOR]].map(([name, color]) => el("span", {},
        el("span", { class: "swatch", style: `border-color:${color}` }), name))));
    const edges = A.edges, lo = edges[0], hi = edges[edges.length - 1];
    const top = Math.max(...A.train, ...A.scored) * 1.08 || 1;
    const m = { l: 44, r: 12, t: 8, b: 24 };
    function draw() {
      const [ctx, W, H] = hiDpi(canvas);
      const X = (x) => m.l + (x - lo) / (hi - lo) * (W - m.l - m.r), Y = (y) => m.t + (top - y) / top * (H - m.t - m.b);
      ctx.font = "11px system-ui, sans-serif";
      ctx.fillStyle = "#5f6b7a"; ctx.strokeStyle = "#edf0f4"; ctx.lineWidth = 1;
      ctx.textAlign = "right"; ctx.textBaseline = "middle";
      for (const t of niceTicks(0, top, 4)) {
        ctx.beginPath(); ctx.moveTo(m.l, Y(t)); ctx.lineTo(W - m.r, Y(t)); ctx.stroke();
        ctx.fillText(fmt(t), m.l - 6, Y(t));
      }
      ctx.textAlign = "center"; ctx.textBaseline = "top";
      for (const t of niceTicks(lo, hi, 6)) ctx.fillText(fmt(t), X(t), H - m.b + 6);
      let drawn = 0;
      const halves = A.train.length ? [[A.train, TRAIN_COLOR, 0], [A.scored, SCORED_COLOR, 0.5]]
        : [[A.scored, SCORED_COLOR, 0]];
      for (const [shares, color, offset] of halves) {
        ctx.fillStyle = color;
        shares.forEach((v, i) => {
          if (!(v > 0)) return;
          const a = edges[i] + offset * (edges[i + 1] - edges[i]), b = a + (edges[i + 1] - edges[i]) / halves.length;
          ctx.fillRect(X(a), Y(v), Math.max(1, X(b) - X(a) - 0.5), Y(0) - Y(v));
          drawn++;
        });
      }
      if (A.threshold >= lo && A.threshold <= hi) {
        ctx.strokeStyle = THRESHOLD_COLOR; ctx.lineWidth = 2;
        ctx.beginPath(); ctx.moveTo(X(A.threshold), m.t); ctx.lineTo(X(A.threshold), H - m.b); ctx.stroke();
        drawn++;
      }
      box.dataset.drawn = drawn;
    }
    requestAnimationFrame(draw);
    window.addEventListener("resize", draw);
    return box;
  }

  function anomalySection(A) {
    const rule = A.contamination != null ? `the training scores' ${fmt(1 - A.contamination)} quantile` : "given";
    const kids = [el("div", { class: "charts", id: "anomaly-charts" }, histogramChart(A),
      A.roc ? lineChart(`ROC (AUROC ${fmt(A.measures.auroc, 3)})`, [
        { name: "this model", color: SCORED_COLOR, points: A.roc },
        { name: "chance", color: "#9aa4b2", dash: true, points: [[0, 0], [1, 1]] }],
        null, "false positive rate") : null,
      A.pr ? lineChart(`precision-recall (AP ${fmt(A.measures.average_precision, 3)})`, [
        { name: "this model", color: SCORED_COLOR, points: A.pr }], null, "recall") : null)];
    if (A.top) {
      kids.push(el("p", { class: "caption", text: "The most anomalous inputs, most anomalous first: each over its " +
        "reconstruction and its per-pixel error map (bright: a large error)." }),
        el("div", { class: "picture" }, el("img", { class: "pix", id: "anomaly-top", src: A.top, alt: "most anomalous",
          style: "width:min(100%, 560px)" })));
    }
    return section("Anomaly scores",
      `The last aelab score: ${A.n.toLocaleString("en")} inputs (${A.source}) by the ${A.kind} score; ` +
      `${A.flagged.toLocaleString("en")} flagged above the threshold ${fmt(A.threshold)} (${rule}).` +
      (A.measures ? ` With labels: AUROC ${fmt(A.measures.auroc, 4)}, average precision ` +
        `${fmt(A.measures.average_precision, 4)}.` : ""), ...kids);
  }

  function gridSection(G) {
    const recon = el("img", { class: "pix", id: "grid-recon", alt: "reconstructions" });
    const last = G.frames.length - 1;
    const slider = el("input", { type: "range", id: "epoch-slider", min: 0, max: last, step: 1, value: last });
    const label = el("div", { class: "epoch" }), stats = el("div", { class: "stats" });
    const play = el("button", { id: "play", text: "\u25B6 Play" });
    let timer = null;
    function show(i) {
      slider.value = i;
      recon.src = G.frames[i];
      const epoch = G.epochs[i], r = D.history.find((h) => h.epoch === epoch);
      label.textContent = `epoch ${epoch}`;
      const psnr = r && r.test_psnr != null ? `${r.test_psnr.toFixed(2)} dB` : null;
      stats.replaceChildren(...(r ? [["test BCE", r.test_bce], ["test MSE", r.test_mse], ["PSNR", psnr]]
        .filter(([, v]) => v != null).map(([k, v]) => el("div", {}, `${k} `, el("b", { text: fmt(v) }))) : []));
    }
    function stop() { clearInterval(timer); timer = null; play.textContent = "\u25B6 Play"; }
    play.addEventListener("click", () => {
      if (timer) return stop();
      if (+slider.value === G.frames.length - 1) show(0);
      play.textContent = "\u275A\u275A Pause";
      timer = setInterval(() => (+slider.value >= G.frames.length - 1 ? stop() : show(+slider.value + 1)), 140);
    });
    slider.addEventListener("input", () => { stop(); show(+slider.value); });
    show(G.frames.length - 1);
    return section("Reconstructions, epoch by epoch",
      "The same 50 test images after every epoch: the real images on the left, the model's reconstructions on the " +
      "right, row by row. Press play to watch the edges sharpen.",
      el("div", { class: "row" },
        el("div", { class: "grid-pair" },
          el("figure", {}, el("figcaption", { text: "test images" }),
            el("img", { class: "pix", src: G.real, alt: "test images" })),
          el("figure", {}, el("figcaption", { text: "reconstructions" }), recon)),
        el("div", { class: "controls" }, label, slider,
          el("div", { class: "caption", text: `${G.frames.length} grids, epochs ${G.epochs[0]} to ${G.epochs[last]}` }),
          el("div", { style: "margin-top:10px" }, play), stats)));
  }

  const MAX_SLIDERS = 64;  // a VQ-VAE's code has 784 numbers: the first 64 get sliders

  function explorerSection(decode, shape) {
    const P = D.map, L = D.model.latent, n = P.n, codes = floats(P.codes);
    const code = (i) => Array.from(codes.subarray(i * L, (i + 1) * L));
    const project = (z) => P.axes.map((a) => a.reduce((s, ai, i) => s + ai * (z[i] - P.mean[i]), 0));
    const unproject = (x, y) => P.mean.map((m, i) => m + x * P.axes[0][i] + y * (P.axes[1] ? P.axes[1][i] : 0));
    const xy = Array.from({ length: n }, (_, i) => project(code(i)));
    const placed = xy.filter(([x, y]) => finite(x) && finite(y));  // a diverged model's codes may not be numbers
    const ext = [0, 1].map((d) => {  // the central 99% of the points, padded: a few outliers do not shrink the rest
      const v = placed.map((p) => p[d]).sort((a, b) => a - b), k = v.length;
      if (!k) return [-1, 1];
      const lo = v[Math.floor(0.005 * (k - 1))], hi = v[Math.ceil(0.995 * (k - 1))];
      const pad = (hi - lo || Math.abs(hi) || 1) * 0.08;
      return [lo - pad, hi + pad];
    });
    const labels = P.labels, classes = P.classes, generative = D.model.generative;
    const sprite = new Image();
    sprite.src = P.sprite;

    const map = el("canvas", { id: "map" });
    const hoverReal = el("canvas", { class: "pix small", id: "hover-real" });
    const hoverRecon = el("canvas", { class: "pix small", id: "hover-recon" });
    const hoverLabel = el("div", { class: "caption", text: "Hover a point" });
    const decoded = el("canvas", { class: "pix big", id: "decoded" });
    const decodedLabel = el("div", { class: "caption", id: "decoded-label" });
    const strip = el("div", { class: "strip", id: "strip" });
    const stripLabel = el("div", { class: "caption" });
    const showPrior = el("input", { type: "checkbox", id: "show-prior" });
    showPrior.checked = D.model.name === "aae";  // the AAE's codes against its prior is what it is about
    const prior = generative ? Array.from({ length: 1500 }, () => project(priorDraw(D.model.prior, L))) : [];

    // state: the current code (decoded, on the sliders) and the previous pick, the interpolation's start
    let current = code(0), previous = null, hovered = null;
    const other = labels ? labels.findIndex((c) => c !== labels[0]) : 1;
    previous = code(Math.max(0, Math.min(n - 1, other)));

    const ranges = Array.from({ length: Math.min(L, MAX_SLIDERS) }, (_, d) => {  // a slider for each, up to 64
      let lo = Infinity, hi = -Infinity;
      for (let i = 0; i < n; i++) {
        if (finite(codes[i * L + d])) { lo = Math.min(lo, codes[i * L + d]); hi = Math.max(hi, codes[i * L + d]); }
      }
      if (generative || lo > hi) { lo = Math.min(lo, -3); hi = Math.max(hi, 3); }
      const pad = (hi - lo || 1) * 0.15;
      return [lo - pad, hi + pad];
    });
    const sliders = ranges.map(([lo, hi], d) => {
      const input = el("input", { type: "range", min: lo, max: hi, step: (hi - lo) / 500, "data-dim": d });
      const value = el("span");
      input.addEventListener("input", () => { current[d] = +input.value; update(null, `moved z${d + 1}`); });
      return { input, value, row: el("label", { class: "slider" }, el("span", { text: `z${d + 1}` }), input, value) };
    });

    function view() {  // map units <-> pixels; a point beyond the padded range sits on the frame's edge
      const r = map.getBoundingClientRect(), m = 10;
      const clamp = (v, hi) => Math.min(Math.max(v, m), hi - m);
      const X = (x) => clamp(m + (x - ext[0][0]) / (ext[0][1] - ext[0][0]) * (r.width - 2 * m), r.width);
      const Y = (y) => clamp(r.height - m - (y - ext[1][0]) / (ext[1][1] - ext[1][0]) * (r.height - 2 * m), r.height);
      const inv = (px, py) => [ext[0][0] + (px - m) / (r.width - 2 * m) * (ext[0][1] - ext[0][0]),
                               ext[1][0] + (r.height - m - py) / (r.height - 2 * m) * (ext[1][1] - ext[1][0])];
      return { X, Y, inv };
    }

    function drawMap() {
      const [ctx, W, H] = hiDpi(map), { X, Y } = view();
      ctx.clearRect(0, 0, W, H);
      ctx.strokeStyle = "#eef1f5"; ctx.lineWidth = 1;
      if (ext[0][0] < 0 && ext[0][1] > 0) { ctx.beginPath(); ctx.moveTo(X(0), 0); ctx.lineTo(X(0), H); ctx.stroke(); }
      if (ext[1][0] < 0 && ext[1][1] > 0) { ctx.beginPath(); ctx.moveTo(0, Y(0)); ctx.lineTo(W, Y(0)); ctx.stroke(); }
      const inside = ([x, y]) => x >= ext[0][0] && x <= ext[0][1] && y >= ext[1][0] && y <= ext[1][1];
      if (showPrior.checked) {  // draws beyond the frame are left out, not piled on its edge
        ctx.fillStyle = "rgba(60, 60, 60, .28)";
        for (const p of prior) if (inside(p)) ctx.fillRect(X(p[0]) - 1, Y(p[1]) - 1, 2, 2);
      }
      ctx.globalAlpha = 0.78;
      let drawn = 0;
      for (let i = 0; i < n; i++) {
        if (!finite(xy[i][0]) || !finite(xy[i][1])) continue;
        ctx.fillStyle = labels ? COLORS[labels[i] % COLORS.length] : COLORS[0];
        ctx.beginPath(); ctx.arc(X(xy[i][0]), Y(xy[i][1]), 2.4, 0, 2 * Math.PI); ctx.fill();
        drawn++;
      }
      map.dataset.drawn = drawn;
      ctx.globalAlpha = 1;
      if (!drawn) {
        ctx.textAlign = "center"; ctx.fillStyle = "#5f6b7a"; ctx.font = "13px system-ui, sans-serif";
        ctx.fillText("no test code is a finite number: nothing to place", W / 2, H / 2);
      }
      ctx.font = "11px system-ui, sans-serif"; ctx.fillStyle = "#5f6b7a";
      ctx.textAlign = "right"; ctx.fillText(P.axis_names[0] + " \u2192", W - 8, H - 8);
      ctx.save(); ctx.translate(14, 8); ctx.rotate(-Math.PI / 2); ctx.textAlign = "right";
      ctx.fillText(P.axis_names[1] + " \u2192", -0, 0); ctx.restore();
      if (hovered != null) ring(ctx, X(xy[hovered][0]), Y(xy[hovered][1]), 6, "#1d2433", null);
      const a = project(previous), b = project(current);
      ctx.strokeStyle = "#1d2433"; ctx.setLineDash([4, 4]); ctx.lineWidth = 1.2;
      ctx.beginPath(); ctx.moveTo(X(a[0]), Y(a[1])); ctx.lineTo(X(b[0]), Y(b[1])); ctx.stroke(); ctx.setLineDash([]);
      ring(ctx, X(a[0]), Y(a[1]), 7, "#1d2433", "A");
      ring(ctx, X(b[0]), Y(b[1]), 8, "#c2185b", "B");
    }

    function ring(ctx, x, y, r, color, text) {  // a marker with a white halo, readable over any class colour
      ctx.lineWidth = 4; ctx.strokeStyle = "#fff";
      ctx.beginPath(); ctx.arc(x, y, r, 0, 2 * Math.PI); ctx.stroke();
      ctx.lineWidth = 2; ctx.strokeStyle = color;
      ctx.beginPath(); ctx.arc(x, y, r, 0, 2 * Math.PI); ctx.stroke();
      if (text) {
        ctx.font = "bold 13px system-ui, sans-serif"; ctx.textAlign = "left"; ctx.textBaseline = "alphabetic";
        ctx.lineWidth = 3; ctx.strokeStyle = "#fff"; ctx.strokeText(text, x + r + 3, y - r);
        ctx.fillStyle = color; ctx.fillText(text, x + r + 3, y - r);
      }
    }

    function preview(i) {  // test image i and its reconstruction, decoded here
      const [, h, w] = shape, col = i % P.sprite_cols, row = Math.floor(i / P.sprite_cols);
      hoverReal.width = w; hoverReal.height = h;
      hoverReal.getContext("2d").drawImage(sprite, col * w, row * h, w, h, 0, 0, w, h);
      paint(hoverRecon, decode(code(i)), shape);
      hoverLabel.dataset.index = i;
      hoverLabel.textContent = `test image ${i}` + (labels ? ` \u00b7 ${classes[labels[i]]}` : "") +
        " \u00b7 click to take its code";
    }

    function update(pick, what) {  // decode the current code and refresh everything that shows it
      paint(decoded, decode(current), shape);
      decoded.dataset.code = JSON.stringify(current);
      window.aelab.current = current.slice();
      if (what) decodedLabel.textContent = what;
      sliders.forEach(({ input, value }, d) => {
        input.value = current[d];
        value.textContent = current[d].toFixed(2);
      });
      const steps = 10;
      if (strip.children.length !== steps) {
        strip.replaceChildren(...Array.from({ length: steps }, () => el("canvas", { class: "pix" })));
      }
      Array.from(strip.children).forEach((c, s) => {
        const t = s / (steps - 1);
        paint(c, decode(previous.map((a, i) => (1 - t) * a + t * current[i])), shape);
      });
      stripLabel.textContent = "From A (the previous pick) to B (the current code), in 10 evenly spaced codes.";
      drawMap();
    }

    map.addEventListener("mousemove", (e) => {
      const r = map.getBoundingClientRect(), px = e.clientX - r.left, py = e.clientY - r.top, { X, Y } = view();
      let best = null, bestD = 36;
      for (let i = 0; i < n; i++) {
        const d = (X(xy[i][0]) - px) ** 2 + (Y(xy[i][1]) - py) ** 2;
        if (d < bestD) { best = i; bestD = d; }
      }
      if (best !== hovered) {
        hovered = best;
        if (best != null) preview(best);
        drawMap();
      }
    });
    map.addEventListener("mouseleave", () => { hovered = null; drawMap(); });
    map.addEventListener("click", (e) => {
      previous = current;
      if (hovered != null) {
        current = code(hovered);
        update(true, `B: the code of test image ${hovered}` + (labels ? ` (${classes[labels[hovered]]})` : ""));
      } else {
        const r = map.getBoundingClientRect(), [x, y] = view().inv(e.clientX - r.left, e.clientY - r.top);
        current = unproject(x, y);
        update(true, `B: the map point (${x.toFixed(2)}, ${y.toFixed(2)})` +
          (L > 2 ? ", the mean code moved along the two axes" : ""));
      }
    });
    showPrior.addEventListener("change", drawMap);
    window.addEventListener("resize", drawMap);
    window.aelab.pointOnScreen = (i) => {  // where test point i is drawn, in viewport pixels (for tests)
      const r = map.getBoundingClientRect(), { X, Y } = view();
      return [r.left + X(xy[i][0]), r.top + Y(xy[i][1])];
    };
    window.aelab.project = project;
    window.aelab.unproject = unproject;

    const legend = labels ? el("div", { class: "legend-classes" }, classes.map((name, c) =>
      el("span", {}, el("span", { class: "dot", style: `background:${COLORS[c % COLORS.length]}` }), name))) : null;
    const how = L === 2 ? "the code itself (it has two numbers)"
      : L === 1 ? "the code (one number) along the horizontal axis"
      : `the codes' first two principal axes (${P.variance.map((v) => `${(100 * v).toFixed(0)}%`).join(" and ")} of ` +
        "their variance); a point of the map is the mean code moved along them";
    const section_ = section("Latent explorer",
      `${n.toLocaleString("en")} test images placed by ${how}. Hover a point to see the image and its ` +
      "reconstruction; " +
      "click a point to take its code, or anywhere to decode that place of the map, in this page. The sliders move " +
      "each number of the current code; the strip walks from the previous pick (A) to the current one (B).",
      el("div", { class: "explorer" },
        el("div", { class: "map-wrap" }, map, legend,
          generative ? el("label", { class: "check" }, showPrior,
            ` show ${1500} draws from the prior (${D.model.prior}) in grey`) : null),
        el("div", {},
          el("h3", { text: "Hovered" }),
          el("div", { class: "panel" },
            el("figure", {}, hoverReal, el("figcaption", { class: "caption", text: "test image" })),
            el("figure", {}, hoverRecon, el("figcaption", { class: "caption", text: "reconstruction" }))),
          hoverLabel,
          el("h3", { text: "Decoded here" }),
          el("div", { class: "panel" }, decoded, el("div", { style: "flex:1;min-width:150px" }, decodedLabel)),
          el("h3", { text: `The code: ${L} numbers` }),
          el("div", { class: "sliders" }, sliders.map((s) => s.row)))),
      el("h3", { text: "Interpolation A \u2192 B" }), strip, stripLabel);
    sprite.addEventListener("load", () => preview(0));
    requestAnimationFrame(() => {
      decodedLabel.textContent = "B: the code of test image 0; click the map to pick another";
      update(false);
    });
    return section_;
  }

  function samplesSection(decode, shape) {
    const L = D.model.latent, grid = el("div", { class: "samples", id: "samples" });
    function draw() {
      const canvases = Array.from({ length: 20 }, () => el("canvas", { class: "pix" }));
      canvases.forEach((c) => paint(c, decode(priorDraw(D.model.prior, L)), shape));
      grid.replaceChildren(...canvases);
    }
    draw();
    return section("New samples", `Codes drawn from the prior (${D.model.prior}) in this page and decoded here: ` +
      "images the model was never shown.", el("div", { style: "margin-bottom:10px" },
        el("button", { id: "new-samples", text: "New samples", onclick: draw })), grid);
  }

  // -- the comparison page ----------------------------------------------------------------------------------

  const COLUMN_TITLES = {  // in compare.COLUMNS' order
    method: "method", sampler: "sampler", latent: "code size", sse_per_image: "squared error / image", mse: "MSE",
    bce: "BCE", nll: "NLL (nats)", nll_k: "NLL's K", frechet: "Fréchet distance", frechet_floor: "Fréchet floor",
    precision: "precision", recall: "recall", density: "density", coverage: "coverage", parameters: "parameters",
    train_seconds: "train seconds", epochs: "epochs", knn_accuracy: "kNN accuracy", probe_accuracy: "linear probe",
  };
  const LOWER_BETTER = ["sse_per_image", "mse", "bce", "frechet", "nll"],
    HIGHER_BETTER = ["knn_accuracy", "probe_accuracy", "precision", "recall", "coverage"];

  function comparePage() {
    const rows = D.rows;
    page.append(el("header", {}, el("div", { class: "brand", text: "aelab comparison" }), el("h1", { text: D.title }),
      el("div", { class: "facts" }, el("span", {}, el("b", { text: String(rows.length) }), " rows"),
        el("span", {}, "code sizes ", el("b", { text: [...new Set(rows.map((r) => r.latent))].join(", ") })))));
    for (const f of D.figures) {
      page.append(section(`Figure 12.3 with ${f.latent}-number codes`, "The first test image of each class, " +
        "and below it each method's reconstruction from its code.",
        el("div", { class: "figure" }, el("img", { src: f.uri, alt: `reconstructions at ${f.latent}` }))));
    }
    const columns = Object.keys(COLUMN_TITLES).filter((c) => rows.some((r) => r[c] != null));
    const tbody = el("tbody");
    let sortKey = null, ascending = true;
    const heads = columns.map((c) => el("th", { "data-key": c, title: "sort by " + COLUMN_TITLES[c] }));
    function cell(v, c) {
      if (v == null) return "";
      if (["sse_per_image", "nll", "frechet", "frechet_floor", "train_seconds"].includes(c)) return v.toFixed(2);
      if (["mse", "bce", "knn_accuracy", "probe_accuracy", "precision", "recall", "density", "coverage"].includes(c))
        return v.toFixed(4);
      return typeof v === "number" ? v.toLocaleString("en") : String(v);
    }
    function best(c, r) {  // the best value of a column among the rows of the same code size
      const peers = rows.filter((o) => o.latent === r.latent && o[c] != null).map((o) => o[c]);
      if (peers.length < 2) return false;
      if (LOWER_BETTER.includes(c)) return r[c] === Math.min(...peers);
      return HIGHER_BETTER.includes(c) && r[c] === Math.max(...peers);
    }
    function fill() {
      const sorted = rows.slice();
      if (sortKey) sorted.sort((a, b) => {
        const x = a[sortKey], y = b[sortKey];
        if (x == null || y == null) return (x == null) - (y == null);
        return (typeof x === "number" ? x - y : String(x).localeCompare(String(y))) * (ascending ? 1 : -1);
      });
      tbody.replaceChildren(...sorted.map((r) => el("tr", {}, columns.map((c) =>
        el("td", { class: best(c, r) ? "best" : "" },
          c === "method" && r.page ? el("a", { href: r.page, text: r.method }) : cell(r[c], c))))));
      heads.forEach((h) => {
        const k = h.dataset.key;
        h.className = k === sortKey ? "sorted" : "";
        h.textContent = COLUMN_TITLES[k] + (k === sortKey ? (ascending ? " \u25B2" : " \u25BC") : "");
      });
    }
    heads.forEach((h) => h.addEventListener("click", () => {
      const k = h.dataset.key;
      ascending = k === sortKey ? !ascending : true;
      sortKey = k;
      fill();
    }));
    fill();
    page.append(section("Leaderboard", "Click a column to sort; the best value at each code size is in green. " +
      "Methods that were trained here link to their own run pages.",
      el("div", { style: "overflow-x:auto" },
        el("table", { id: "leaderboard" }, el("thead", {}, el("tr", {}, heads)), tbody)),
      D.notes.map((t) => el("p", { class: "caption", text: t }))));
    if (D.samples && D.samples.length) {
      page.append(section("Samples", "100 samples of each method by each sampler, from the seed the leaderboard's " +
        "measures draw from: prior decodes draws of the model's prior, gmm those of a Gaussian mixture fitted to " +
        "its training codes.",
        el("div", { id: "sample-grids", style: "display:flex;flex-wrap:wrap;gap:16px" }, D.samples.map((g) =>
          el("figure", { style: "margin:0" },
            el("img", { src: g.uri, alt: `${g.method} samples by ${g.sampler}`, style: "width:280px;image-rendering:pixelated" }),
            el("figcaption", { class: "caption", text: `${g.method}, ${g.latent} numbers, ${g.sampler}` }))))));
    }
    if (D.error_vs_latent) {
      page.append(section("Error against code size", null,
        el("div", { class: "figure" },
          el("img", { src: D.error_vs_latent, alt: "error against code size", style: "max-width:640px" }))));
    }
  }

  if (D.kind === "run") runPage(); else comparePage();
})();
