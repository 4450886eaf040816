// The federation page's charts (recharts), loaded with that page only.
import {
  Bar,
  BarChart,
  CartesianGrid,
  Cell,
  Legend,
  Line,
  LineChart,
  ReferenceLine,
  ResponsiveContainer,
  Tooltip,
  XAxis,
  YAxis,
} from "recharts";
import { bytes } from "../format";
import { Empty } from "./states";

const C = { a: "#4f46e5", b: "#0ea5e9", ok: "#16a34a", warn: "#d97706", bad: "#dc2626", grid: "rgb(127 127 160 / 25%)" };
const axis = { fontSize: 12, stroke: "currentColor", opacity: 0.7 };

export interface RoundPoint {
  round: number;
  train_loss?: number | null;
  eval?: number | null;
}
export interface ClientValue {
  client: string;
  value: number;
}

function ChartFrame({ label, caption, children }: { label: string; caption: string; children: React.ReactElement }) {
  return (
    <figure style={{ margin: 0 }}>
      <div className="chart" role="img" aria-label={label}>
        <ResponsiveContainer width="100%" height="100%">
          {children}
        </ResponsiveContainer>
      </div>
      <figcaption className="chart-caption">{caption}</figcaption>
    </figure>
  );
}

export function LossChart({ data, evalName }: { data: RoundPoint[]; evalName: string | null }) {
  if (!data.length) return <Empty title="No completed rounds yet">Loss and evaluation appear after round 1.</Empty>;
  return (
    <ChartFrame
      label="Training loss and evaluation metric per round"
      caption={`Mean client training loss per round${evalName ? `; ${evalName} of the global adapter on the right axis` : ""}.`}
    >
      <LineChart data={data} margin={{ top: 8, right: 12, bottom: 4, left: 0 }}>
        <CartesianGrid stroke={C.grid} strokeDasharray="3 3" />
        <XAxis dataKey="round" tick={axis} label={{ value: "round", position: "insideBottomRight", offset: -2, fontSize: 11 }} />
        <YAxis yAxisId="l" tick={axis} width={48} />
        {evalName && <YAxis yAxisId="r" orientation="right" tick={axis} width={48} />}
        <Tooltip />
        <Legend />
        <Line yAxisId="l" type="monotone" dataKey="train_loss" name="train loss" stroke={C.a} strokeWidth={2} dot connectNulls isAnimationActive={false} />
        {evalName && (
          <Line yAxisId="r" type="monotone" dataKey="eval" name={evalName} stroke={C.b} strokeWidth={2} dot connectNulls isAnimationActive={false} />
        )}
      </LineChart>
    </ChartFrame>
  );
}

export function EpsilonChart({ data, budget }: { data: ClientValue[]; budget: number | null }) {
  if (!data.length) return <Empty title="No members yet">Each member's spent epsilon appears here.</Empty>;
  return (
    <ChartFrame
      label="Epsilon spent per client against the budget"
      caption={budget != null ? `Epsilon spent per client; the dashed line is the budget (ε = ${budget}).` : "Epsilon spent per client."}
    >
      <BarChart data={data} margin={{ top: 8, right: 12, bottom: 4, left: 0 }}>
        <CartesianGrid stroke={C.grid} strokeDasharray="3 3" />
        <XAxis dataKey="client" tick={axis} />
        <YAxis tick={axis} width={48} domain={[0, (max: number) => Math.max(max, budget ?? 0) * 1.1 || 1]} />
        <Tooltip formatter={(v) => Number(v).toFixed(3)} />
        <Bar dataKey="value" name="ε spent" isAnimationActive={false}>
          {data.map((d) => (
            <Cell key={d.client} fill={budget != null && d.value >= budget ? C.bad : budget != null && d.value >= 0.8 * budget ? C.warn : C.ok} />
          ))}
        </Bar>
        {budget != null && <ReferenceLine y={budget} stroke={C.bad} strokeDasharray="6 4" label={{ value: "budget", fontSize: 11, position: "insideTopRight" }} />}
      </BarChart>
    </ChartFrame>
  );
}

export function RankChart({ data }: { data: { rank: string; members: number }[] }) {
  if (!data.length) return <Empty title="No members yet">Rank budgets appear when clients join.</Empty>;
  return (
    <ChartFrame label="Distribution of member rank budgets" caption="Members per LoRA rank budget.">
      <BarChart data={data} margin={{ top: 8, right: 12, bottom: 4, left: 0 }}>
        <CartesianGrid stroke={C.grid} strokeDasharray="3 3" />
        <XAxis dataKey="rank" tick={axis} label={{ value: "rank budget", position: "insideBottomRight", offset: -2, fontSize: 11 }} />
        <YAxis tick={axis} width={40} allowDecimals={false} />
        <Tooltip />
        <Bar dataKey="members" fill={C.a} isAnimationActive={false} />
      </BarChart>
    </ChartFrame>
  );
}

export function BytesChart({ data }: { data: ClientValue[] }) {
  if (!data.length) return <Empty title="No uploads yet">Bytes per client appear after the first accepted update.</Empty>;
  return (
    <ChartFrame label="Bytes uploaded per client" caption="Total size of accepted updates per client.">
      <BarChart data={data} margin={{ top: 8, right: 12, bottom: 4, left: 8 }}>
        <CartesianGrid stroke={C.grid} strokeDasharray="3 3" />
        <XAxis dataKey="client" tick={axis} />
        <YAxis tick={axis} width={64} tickFormatter={(v: number) => bytes(v)} />
        <Tooltip formatter={(v) => bytes(Number(v))} />
        <Bar dataKey="value" name="uploaded" fill={C.b} isAnimationActive={false} />
      </BarChart>
    </ChartFrame>
  );
}
