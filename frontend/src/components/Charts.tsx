// The federation page's charts, drawn with uPlot (a maintained canvas chart library of about
// 20 KB gzipped; loaded with that page only). Each chart is an image with a label for
// assistive technology, plus a visually hidden table of the same numbers.
import { useEffect, useMemo, useRef } from "react";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { bytes, num } from "../format";
import { Empty } from "./states";

export interface RoundPoint {
  round: number;
  train_loss?: number | null;
  /** Federated evaluation of the adapter this round published (example-weighted). */
  eval_loss?: number | null;
  eval_accuracy?: number | null;
  eval_perplexity?: number | null;
  /** Clients that scored it so far. */
  eval_clients?: number | null;
  /** This round published the best adapter by federated evaluation. */
  best?: boolean;
}
export interface ClientValue {
  client: string;
  value: number;
}

const HEIGHT = 240;

function theme() {
  const css = getComputedStyle(document.documentElement);
  const v = (name: string, fallback: string) => css.getPropertyValue(name).trim() || fallback;
  return {
    text: v("--muted", "#5d6580"),
    grid: "rgba(127,127,160,0.22)",
    a: "#4f46e5",
    b: "#0ea5e9",
    ok: "#16a34a",
    warn: "#d97706",
    bad: "#dc2626",
    font: "12px system-ui, sans-serif",
  };
}

function axis(t: ReturnType<typeof theme>, extra: uPlot.Axis = {}): uPlot.Axis {
  return { stroke: t.text, font: t.font, grid: { stroke: t.grid, width: 1 }, ticks: { stroke: t.grid, width: 1 }, ...extra };
}

/** x axis with one tick per category (client name, rank). */
function categoryAxis(t: ReturnType<typeof theme>, labels: string[]): uPlot.Axis {
  return axis(t, {
    grid: { show: false },
    splits: () => labels.map((_, i) => i),
    values: (_u, splits) => splits.map((i) => labels[i] ?? ""),
  });
}

function categoryScale(n: number): uPlot.Scale {
  return { time: false, range: (): uPlot.Range.MinMax => [-0.5, n - 0.5] };
}

/** y from 0 to a bit above the largest bar (or the given floor, e.g. a budget line). */
function zeroBased(floor: number): uPlot.Scale {
  return { range: (_u, _min, max): uPlot.Range.MinMax => [0, Math.max(max || 0, floor, 1) * 1.1] };
}

function Plot({
  label,
  caption,
  build,
  table,
}: {
  label: string;
  caption: string;
  build: (t: ReturnType<typeof theme>) => { opts: Omit<uPlot.Options, "width" | "height">; data: uPlot.AlignedData };
  table: { head: string[]; rows: (string | number)[][] };
}) {
  const ref = useRef<HTMLDivElement>(null);
  useEffect(() => {
    const el = ref.current;
    if (!el) return;
    const { opts, data } = build(theme());
    const u = new uPlot({ ...opts, width: Math.max(el.clientWidth, 200), height: HEIGHT }, data, el);
    const ro = new ResizeObserver(() => u.setSize({ width: Math.max(el.clientWidth, 200), height: HEIGHT }));
    ro.observe(el);
    return () => {
      ro.disconnect();
      u.destroy();
    };
  }, [build]);
  return (
    <figure style={{ margin: 0 }}>
      <div className="chart" role="img" aria-label={label} ref={ref} />
      <figcaption className="chart-caption">{caption}</figcaption>
      <table className="visually-hidden" aria-label={label}>
        <thead>
          <tr>
            {table.head.map((h) => (
              <th key={h} scope="col">
                {h}
              </th>
            ))}
          </tr>
        </thead>
        <tbody>
          {table.rows.map((r, i) => (
            <tr key={i}>
              {r.map((c, j) => (
                <td key={j}>{c}</td>
              ))}
            </tr>
          ))}
        </tbody>
      </table>
    </figure>
  );
}

const bars = () => uPlot.paths.bars!({ size: [0.6, 56] });

/** A vertical dashed line with a label at ``x`` (the best adapter's round). */
function markRound(t: ReturnType<typeof theme>, x: number | null, label: string) {
  return (u: uPlot) => {
    if (x == null) return;
    const px = u.valToPos(x, "x", true);
    const ctx = u.ctx;
    ctx.save();
    ctx.strokeStyle = t.ok;
    ctx.fillStyle = t.ok;
    ctx.lineWidth = 1.5 * uPlot.pxRatio;
    ctx.setLineDash([5 * uPlot.pxRatio, 4 * uPlot.pxRatio]);
    ctx.beginPath();
    ctx.moveTo(px, u.bbox.top);
    ctx.lineTo(px, u.bbox.top + u.bbox.height);
    ctx.stroke();
    ctx.font = `${11 * uPlot.pxRatio}px system-ui, sans-serif`;
    ctx.fillText(label, px + 4 * uPlot.pxRatio, u.bbox.top + 12 * uPlot.pxRatio);
    ctx.restore();
  };
}

/**
 * Per round: the clients' mean training loss, and the federated evaluation of the adapter the
 * round published (its loss on the left axis with the training loss; accuracy on the right
 * for classification), with the best adapter's round marked.
 */
export function LossChart({ data }: { data: RoundPoint[] }) {
  const hasEval = data.some((d) => d.eval_loss != null);
  const hasAccuracy = data.some((d) => d.eval_accuracy != null);
  const best = data.find((d) => d.best)?.round ?? null;
  const build = useMemo(
    () => (t: ReturnType<typeof theme>) => {
      const series: uPlot.Series[] = [
        { label: "round" },
        { label: "train loss", stroke: t.a, width: 2, scale: "loss", points: { size: 6, fill: t.a }, spanGaps: true },
      ];
      const axes = [axis(t, { incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] }), axis(t, { scale: "loss", label: "loss", labelFont: t.font })];
      const cols: (number | null)[][] = [data.map((d) => d.round), data.map((d) => d.train_loss ?? null)];
      if (hasEval) {
        series.push({ label: "federated eval loss", stroke: t.warn, width: 2, dash: [6, 4], scale: "loss", points: { size: 6, fill: t.warn }, spanGaps: true });
        cols.push(data.map((d) => d.eval_loss ?? null));
      }
      if (hasAccuracy) {
        series.push({ label: "federated eval accuracy", stroke: t.b, width: 2, scale: "accuracy", points: { size: 6, fill: t.b }, spanGaps: true });
        axes.push(axis(t, { scale: "accuracy", side: 1, grid: { show: false }, label: "accuracy", labelFont: t.font }));
        cols.push(data.map((d) => d.eval_accuracy ?? null));
      }
      return {
        opts: {
          series,
          axes,
          scales: { x: { time: false }, accuracy: { range: (): uPlot.Range.MinMax => [0, 1] } },
          legend: { show: true },
          hooks: { draw: [markRound(t, best, "best")] },
        },
        data: cols as uPlot.AlignedData,
      };
    },
    [data, hasEval, hasAccuracy, best],
  );
  if (!data.length) return <Empty title="No completed rounds yet">Loss and evaluation appear after round 1.</Empty>;
  const bestPoint = data.find((d) => d.best);
  const bestText = bestPoint
    ? ` The best adapter so far is round ${bestPoint.round}'s${bestPoint.eval_accuracy != null ? ` (accuracy ${num(bestPoint.eval_accuracy)})` : ` (loss ${num(bestPoint.eval_loss)})`}.`
    : "";
  return (
    <Plot
      label="Training loss and evaluation metric per round"
      caption={
        hasEval
          ? `Mean client training loss per round, and the federated evaluation of the global adapter each round published: every member scores it on its own held-out data when the next round starts (the last one in a final evaluation pass), weighted by example count.${bestText}`
          : "Mean client training loss per round. The federated evaluation of each round's adapter appears when the next round's clients have scored it."
      }
      build={build}
      table={{
        head: ["round", "train loss", "eval loss", "eval accuracy", "eval perplexity", "clients", "best"],
        rows: data.map((d) => [
          d.round,
          num(d.train_loss),
          num(d.eval_loss),
          num(d.eval_accuracy),
          num(d.eval_perplexity),
          d.eval_clients ?? "—",
          d.best ? "best" : "",
        ]),
      }}
    />
  );
}

export function EpsilonChart({ data, budget }: { data: ClientValue[]; budget: number | null }) {
  const build = useMemo(
    () => (t: ReturnType<typeof theme>) => {
      const labels = data.map((d) => d.client);
      const b = budget ?? Infinity;
      // Three overlapping bar series so each bar is coloured by how close it is to the budget.
      const band = (lo: number, hi: number) => data.map((d) => (d.value >= lo * b && d.value < hi * b ? d.value : null));
      const s = (label: string, color: string): uPlot.Series => ({ label, fill: color, stroke: color, paths: bars(), points: { show: false } });
      return {
        opts: {
          series: [
            { label: "client", value: (_u: uPlot, v: number) => labels[v] ?? "" },
            s("ε spent", t.ok),
            s("ε ≥ 80% of budget", t.warn),
            s("ε at budget", t.bad),
          ],
          axes: [categoryAxis(t, labels), axis(t)],
          scales: { x: categoryScale(labels.length), y: zeroBased(budget ?? 0) },
          hooks: {
            draw: [
              (u: uPlot) => {
                if (budget == null) return;
                const y = u.valToPos(budget, "y", true);
                const ctx = u.ctx;
                ctx.save();
                ctx.strokeStyle = t.bad;
                ctx.lineWidth = 1.5 * uPlot.pxRatio;
                ctx.setLineDash([6 * uPlot.pxRatio, 4 * uPlot.pxRatio]);
                ctx.beginPath();
                ctx.moveTo(u.bbox.left, y);
                ctx.lineTo(u.bbox.left + u.bbox.width, y);
                ctx.stroke();
                ctx.restore();
              },
            ],
          },
        },
        data: [labels.map((_, i) => i), band(0, 0.8), band(0.8, 1), band(1, Infinity)] as uPlot.AlignedData,
      };
    },
    [data, budget],
  );
  if (!data.length) return <Empty title="No members yet">Each member's spent epsilon appears here.</Empty>;
  return (
    <Plot
      label="Epsilon spent per client against the budget"
      caption={budget != null ? `Epsilon spent per client; the dashed line is the budget (ε = ${budget}).` : "Epsilon spent per client."}
      build={build}
      table={{ head: ["client", "epsilon spent", "budget"], rows: data.map((d) => [d.client, num(d.value), budget ?? "—"]) }}
    />
  );
}

function CategoryBars({
  label,
  caption,
  labels,
  values,
  series,
  color,
  format,
  integer,
  category,
}: {
  label: string;
  caption: string;
  labels: string[];
  values: number[];
  series: string;
  color: (t: ReturnType<typeof theme>) => string;
  format?: (v: number) => string;
  /** Name of the categories (x). */
  category: string;
  /** Whole numbers only on the y axis (counts). */
  integer?: boolean;
}) {
  const build = useMemo(
    () => (t: ReturnType<typeof theme>) => ({
      opts: {
        series: [
          { label: category, value: (_u: uPlot, v: number) => labels[v] ?? "" },
          { label: series, fill: color(t), stroke: color(t), paths: bars(), points: { show: false }, value: format ? (_u: uPlot, v: number) => (v == null ? "—" : format(v)) : undefined },
        ],
        axes: [categoryAxis(t, labels), axis(t, {
            ...(format ? { values: (_u: uPlot, splits: number[]) => splits.map(format), size: 64 } : {}),
            ...(integer ? { incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] } : {}),
          }),
        ],
        scales: { x: categoryScale(labels.length), y: zeroBased(0) },
      },
      data: [labels.map((_, i) => i), values] as uPlot.AlignedData,
    }),
    [labels, values, series, color, format, integer, category],
  );
  return (
    <Plot
      label={label}
      caption={caption}
      build={build}
      table={{ head: [category, series], rows: labels.map((l, i) => [l, format ? format(values[i]) : values[i]]) }}
    />
  );
}

const accent = (t: ReturnType<typeof theme>) => t.a;
const accent2 = (t: ReturnType<typeof theme>) => t.b;

export function RankChart({ data }: { data: { rank: string; members: number }[] }) {
  const labels = useMemo(() => data.map((d) => d.rank), [data]);
  const values = useMemo(() => data.map((d) => d.members), [data]);
  if (!data.length) return <Empty title="No members yet">Rank budgets appear when clients join.</Empty>;
  return (
    <CategoryBars
      label="Distribution of member rank budgets"
      caption="Members per LoRA rank budget."
      labels={labels}
      values={values}
      series="members"
      category="rank budget"
      color={accent}
      integer
    />
  );
}

export function BytesChart({ data }: { data: ClientValue[] }) {
  const labels = useMemo(() => data.map((d) => d.client), [data]);
  const values = useMemo(() => data.map((d) => d.value), [data]);
  if (!data.length) return <Empty title="No uploads yet">Bytes per client appear after the first accepted update.</Empty>;
  return (
    <CategoryBars
      label="Bytes uploaded per client"
      caption="Total size of accepted updates per client."
      labels={labels}
      values={values}
      series="uploaded"
      category="client"
      color={accent2}
      format={bytes}
    />
  );
}
