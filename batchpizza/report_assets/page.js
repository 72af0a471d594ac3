
(function () {
  "use strict";
  var R = JSON.parse(document.getElementById("report-data").textContent);
  var C = {blue: "#3566d6", green: "#1f9d6b", red: "#d64545", amber: "#e0902f",
           violet: "#7a5af8", ink: "#1d2330", muted: "#667085", line: "#e6e8ee"};
  var MARK = {open: C.red, probe: C.amber, closed: C.green, "gave-up": C.ink};
  var dpr = window.devicePixelRatio || 1, drawn = [], failed = [], plots = [];
  var stepped = uPlot.paths.stepped({align: 1});
  var S = R.series, w = S.bucket_s, n = S.t.length;

  // The time charts put the kept buckets side by side: x is a bucket's position, and idle time
  // between runs (a jump in S.t) is cut out and drawn as a break.
  var breaks = [];
  for (var b = 1; b < n; b++) {
    if (S.t[b] - S.t[b - 1] > w) breaks.push([b, S.t[b] - S.t[b - 1] - w]);
  }
  function pos(t) {
    if (!n || t <= S.t[0]) return 0;
    var lo = 0, hi = n - 1;
    while (lo < hi) {
      var mid = (lo + hi + 1) >> 1;
      if (S.t[mid] <= t) lo = mid; else hi = mid - 1;
    }
    return lo + Math.min(1, (t - S.t[lo]) / w);
  }
  function timeAt(x) {
    var i = Math.max(0, Math.min(n - 1, Math.floor(x)));
    return S.t[i] + (x - i) * w;
  }
  var multiDay = n && Math.floor(S.t[0] / 86400) !== Math.floor(S.t[n - 1] / 86400);
  function two(v) { return (v < 10 ? "0" : "") + v; }
  function clock(ts, seconds) {
    var d = new Date(ts * 1000);
    var s = two(d.getUTCHours()) + ":" + two(d.getUTCMinutes());
    if (seconds) s += ":" + two(d.getUTCSeconds());
    return multiDay ? two(d.getUTCMonth() + 1) + "-" + two(d.getUTCDate()) + " " + s : s;
  }
  function span(s) {
    if (s < 3600) return Math.round(s / 60) + "m";
    if (s < 86400) return Math.floor(s / 3600) + "h " + two(Math.round(s % 3600 / 60)) + "m";
    return Math.floor(s / 86400) + "d " + two(Math.round(s % 86400 / 3600)) + "h";
  }
  // Ticks at the start of each run of buckets and at round times (some 8 over the axis), none
  // crowding the one before; a run's start wins over a round time too close to it.
  var every = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
               43200, 86400, 172800, 604800].filter(function (c) {
    return c % w === 0 && c / w >= n / 8;
  })[0] || w * Math.ceil(n / 8);
  function ticks() {
    var out = [], starts = [], room = every / w * 0.6;
    for (var i = 0; i < n; i++) {
      var start = i === 0 || S.t[i] - S.t[i - 1] > w;
      if (!start && S.t[i] % every !== 0) continue;
      var last = out.length - 1;
      if (last < 0 || i - out[last] >= room) {
        out.push(i);
        starts.push(start);
      } else if (start && !starts[last]) {
        out[last] = i;
        starts[last] = true;
      }
    }
    return out;
  }
  var timeAxis = {
    stroke: C.muted, grid: {stroke: C.line, width: 1}, ticks: {stroke: C.line, width: 1},
    splits: ticks,
    values: function (u, xs) { return xs.map(function (x) { return clock(timeAt(x), w < 60); }); }
  };
  var timeX = {
    label: "UTC",
    value: function (u, x) { return x == null ? "—" : clock(timeAt(x), true); }
  };

  function fmt(v, digits) {
    return v == null ? "—" : v.toLocaleString("en-US", {maximumFractionDigits: digits});
  }
  function box(el, height) { return {width: Math.max(280, Math.floor(el.clientWidth)), height: height}; }
  function axis(label) {
    return {label: label, stroke: C.muted, grid: {stroke: C.line, width: 1},
            ticks: {stroke: C.line, width: 1}};
  }
  function upTo(max) { return function () { return [0, Math.max(max, 1e-9) * 1.15]; }; }
  function chart(id, height, make) {
    var el = document.getElementById(id);
    try {
      var spec = make(el);
      if (typeof spec === "string") {
        el.className += " empty";
        el.textContent = spec;
        return;
      }
      var opts = box(el, height);
      for (var k in spec.opts) opts[k] = spec.opts[k];
      plots.push([new uPlot(opts, spec.data, el), el, height]);
      drawn.push(id);
    } catch (err) {
      failed.push(id + ": " + err);
    }
  }
  // A label beside a marker, on a pale backing so that it stays legible over a line.
  function label(ctx, s, x, y, colour, right) {
    ctx.font = 11 * dpr + "px system-ui, sans-serif";
    var width = ctx.measureText(s).width, left = right ? x - 4 * dpr - width : x + 4 * dpr;
    ctx.fillStyle = "rgba(255,255,255,.85)";
    ctx.fillRect(left - 2 * dpr, y - 10 * dpr, width + 4 * dpr, 13 * dpr);
    ctx.fillStyle = colour;
    ctx.textAlign = "left";
    ctx.fillText(s, left, y);
  }
  function vline(u, x, colour) {
    var ctx = u.ctx;
    ctx.strokeStyle = colour;
    ctx.beginPath();
    ctx.moveTo(x, u.bbox.top);
    ctx.lineTo(x, u.bbox.top + u.bbox.height);
    ctx.stroke();
  }
  function nearRight(u, x) { return x > u.bbox.left + u.bbox.width - 90 * dpr; }
  // Idle time cut out between runs: a pale band under the series, its length written over them
  // where there is room.
  var gaps = {hooks: {
    drawClear: [function (u) {
      u.ctx.save();
      u.ctx.fillStyle = "rgba(102,112,133,.13)";
      breaks.forEach(function (br) {
        var x = u.valToPos(br[0], "x", true);
        u.ctx.fillRect(x - 3 * dpr, u.bbox.top, 6 * dpr, u.bbox.height);
      });
      u.ctx.restore();
    }],
    draw: [function (u) {
      var last = -Infinity;
      u.ctx.save();
      breaks.forEach(function (br) {
        var x = u.valToPos(br[0], "x", true);
        if (x - last < 70 * dpr) return;
        label(u.ctx, span(br[1]) + " idle", x, u.bbox.top + 12 * dpr, C.muted,
              nearRight(u, x));
        last = x;
      });
      u.ctx.restore();
    }]
  }};
  // Breaker events as dashed vertical lines; a trip is labelled.
  var breaker = {hooks: {draw: [function (u) {
    var ctx = u.ctx;
    ctx.save();
    ctx.lineWidth = 1.5 * dpr;
    ctx.setLineDash([5 * dpr, 4 * dpr]);
    R.breaker.events.forEach(function (e) {
      var x = Math.round(u.valToPos(pos(e.t), "x", true));
      vline(u, x, MARK[e.event] || C.ink);
      if (e.event === "open" || e.event === "gave-up") {
        label(ctx, e.event === "open" ? "breaker open" : "gave up", x, u.bbox.top + 12 * dpr,
              MARK[e.event], nearRight(u, x));
      }
    });
    ctx.restore();
  }]}};
  function line(name, colour, fill) {
    return {label: name, stroke: colour, width: 2, fill: fill, paths: stepped,
            points: {show: false}, value: function (u, v) { return fmt(v, 2); }};
  }
  function timeChart(data, series, yMax, yLabel) {
    return {
      data: data,
      opts: {
        cursor: {sync: {key: "time"}}, plugins: [gaps, breaker],
        scales: {x: {time: false, range: [0, n]}, y: {range: upTo(yMax)}},
        series: [timeX].concat(series),
        axes: [timeAxis, axis(yLabel)]
      }
    };
  }

  chart("chart-requests", 280, function () {
    if (!n) return "No attempts recorded.";
    // A step holds its bucket's value to the bucket's end: repeat the last value there.
    function perSecond(a) {
      var out = a.map(function (v) { return v / w; });
      out.push(out[n - 1]);
      return out;
    }
    var xs = S.t.map(function (t, i) { return i; }).concat([n]), req = perSecond(S.requests);
    return timeChart([xs, req, perSecond(S.answered), perSecond(S.errors)], [
      line("requests/s", C.blue, "rgba(53,102,214,.10)"),
      line("answered/s", C.green),
      line("errors/s", C.red, "rgba(214,69,69,.22)")
    ], Math.max.apply(null, req), "per second");
  });

  chart("chart-tokens", 220, function () {
    if (!n || !S.tokens || !S.tokens.some(function (v) { return v > 0; })) {
      return "No token counts recorded.";
    }
    var xs = S.t.map(function (t, i) { return i; }).concat([n]);
    var ys = S.tokens.map(function (v) { return v / w; });
    ys.push(ys[n - 1]);
    return timeChart([xs, ys], [line("tokens/s", C.green, "rgba(40,160,90,.12)")],
                     Math.max.apply(null, ys), "tokens/s");
  });

  chart("chart-latency", 260, function () {
    var L = R.latency_ms;
    if (!L) return "No answered attempts.";
    var h = L.histogram, xs = [], ys = h.counts;
    for (var i = 0; i < ys.length; i++) xs.push(h.start_ms + (i + 0.5) * h.bin_ms);
    var marks = [["p50", L.p50], ["p90", L.p90], ["p99", L.p99]];
    var percentiles = {hooks: {draw: [function (u) {
      var ctx = u.ctx;
      ctx.save();
      ctx.lineWidth = 1.5 * dpr;
      ctx.setLineDash([4 * dpr, 3 * dpr]);
      marks.forEach(function (m, k) {
        var x = Math.round(u.valToPos(m[1], "x", true));
        vline(u, x, C.ink);
        label(ctx, m[0] + " " + fmt(m[1], 0) + " ms", x, u.bbox.top + (12 + 13 * k) * dpr,
              C.ink, nearRight(u, x));
      });
      ctx.restore();
    }]}};
    return {
      data: [xs, ys],
      opts: {
        plugins: [percentiles],
        scales: {x: {time: false, range: [h.start_ms, h.start_ms + ys.length * h.bin_ms]},
                 y: {range: upTo(Math.max.apply(null, ys) * 1.25)}},
        series: [
          {label: "latency", value: function (u, v) {
            return v == null ? "—" : fmt(v - h.bin_ms / 2, 0) + "–" +
              fmt(v + h.bin_ms / 2, 0) + " ms";
          }},
          {label: "answers", stroke: C.blue, fill: "rgba(53,102,214,.55)", width: 1,
           paths: uPlot.paths.bars({size: [1, Infinity], gap: 1}), points: {show: false}}
        ],
        axes: [axis("milliseconds"), axis("answers")]
      }
    };
  });

  chart("chart-rate", 220, function () {
    var ch = R.rate.changes;
    if (!ch.length) {
      var fixed = [];
      R.runs.forEach(function (r) {
        var rate = r.options.rate;
        if (rate != null && fixed.indexOf(String(rate)) < 0) fixed.push(String(rate));
      });
      return "The rate did not change: a fixed rate" +
        (fixed.length ? " (--rate " + fixed.join(", ") + ")." : ".");
    }
    if (!n) return "No attempts recorded.";
    var xs = ch.map(function (c) { return pos(c.t); }), ys = ch.map(function (c) { return c.rate; });
    if (xs[xs.length - 1] < n) {
      xs.push(n);
      ys.push(ys[ys.length - 1]);
    }
    return timeChart([xs, ys], [line("rate (requests/s)", C.violet, "rgba(122,90,248,.10)")],
                     Math.max.apply(null, ys), "requests/s");
  });

  window.addEventListener("resize", function () {
    plots.forEach(function (p) { p[0].setSize(box(p[1], p[2])); });
  });
  document.body.setAttribute("data-charts", drawn.join(" "));
  document.body.setAttribute("data-chart-errors", failed.join("; "));
})();
