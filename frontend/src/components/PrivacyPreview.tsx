// The new-federation form's privacy preview: what the draft's DP settings do to organizations of
// a few sizes (logical batch, steps per round, sigma, epsilon after all rounds, noise-to-signal)
// and the warnings to read before starting it, from POST /api/v1/federations/dp-preview. It asks
// again, debounced, whenever the settings it depends on change and are complete.
import { useEffect, useState } from "react";
import { keepPreviousData, useQuery } from "@tanstack/react-query";
import { api, ApiError, call, errorMessage } from "../api/client";
import type { components } from "../api/client";
import { num } from "../format";
import { Loading } from "./states";
import { Field } from "./ui";

type PreviewRequest = components["schemas"]["DPPreviewRequest"];
type Preview = components["schemas"]["DPPreviewPublic"];

const DEBOUNCE_MS = 400;
const MAX_SIZES = 12;

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

const isCount = (v: unknown): v is number => typeof v === "number" && Number.isInteger(v) && v >= 1;
const isNumber = (v: unknown): v is number => typeof v === "number" && Number.isFinite(v);

/**
 * The preview's request from the create form's body, or null while a setting it needs is
 * missing or not a number (the server names anything else that is wrong). The model's shapes
 * go along once "Modules" holds a JSON object; without them the preview has no noise-to-signal.
 */
export function previewRequest(draft: Record<string, unknown>, sizes: number[] | null): PreviewRequest | null {
  const { global_rank, num_rounds, clients_per_round, training, dp, model } = draft;
  if (!isCount(global_rank) || !isCount(num_rounds) || !isCount(clients_per_round) || !isObject(dp)) return null;
  if (dp.mode !== "none" && isNumber(dp.target_epsilon) === isNumber(dp.noise_multiplier)) return null;
  const shapes =
    isObject(model) && isObject(model.modules) && Object.keys(model.modules).length > 0
      ? { modules: model.modules, extra_trainable: isObject(model.extra_trainable) ? model.extra_trainable : {} }
      : null;
  return {
    global_rank,
    num_rounds,
    clients_per_round,
    training: (isObject(training) ? training : {}) as PreviewRequest["training"],
    dp: dp as PreviewRequest["dp"],
    model: shapes as PreviewRequest["model"],
    dataset_sizes: sizes,
  };
}

/** "800, 20000" -> [800, 20000]; empty -> null (the server's defaults); undefined if invalid. */
function parseSizes(text: string): number[] | null | undefined {
  const parts = text.split(/[\s,;]+/).filter(Boolean);
  if (!parts.length) return null;
  const sizes = parts.map(Number);
  return sizes.every(isCount) && sizes.length <= MAX_SIZES ? sizes : undefined;
}

/** `value`, once it has stopped changing for `ms`. */
function useDebounced<T>(value: T, ms: number): T {
  const [settled, setSettled] = useState(value);
  useEffect(() => {
    const timer = setTimeout(() => setSettled(value), ms);
    return () => clearTimeout(timer);
  }, [value, ms]);
  return settled;
}

function problem(e: unknown): string {
  if (e instanceof ApiError && Object.keys(e.fields).length) {
    return Object.entries(e.fields)
      .map(([field, msg]) => `${field}: ${msg}`)
      .join("; ");
  }
  return errorMessage(e);
}

/** A Greek letter in an upper-cased table heading, kept lower case (σ, not Σ). */
function Greek({ children }: { children: string }) {
  return <span style={{ textTransform: "none" }}>({children})</span>;
}

function PreviewTable({ preview }: { preview: Preview }) {
  const budget = preview.epsilon_budget;
  return (
    <div className="table-wrap">
      <table aria-label="Privacy preview">
        <thead>
          <tr>
            <th scope="col" className="num">
              Organization size
            </th>
            <th scope="col" className="num">
              Logical batch
            </th>
            <th scope="col" className="num">
              Steps / round
            </th>
            <th scope="col" className="num">
              Sigma <Greek>σ</Greek>
            </th>
            <th scope="col" className="num">
              Epsilon <Greek>ε</Greek>
            </th>
            <th scope="col" className="num">
              Noise-to-signal
            </th>
          </tr>
        </thead>
        <tbody>
          {preview.rows.map((r) => {
            const over = r.epsilon == null || r.epsilon > budget;
            const noisy = r.noise_to_signal != null && r.noise_to_signal > 1;
            return (
              <tr key={r.num_examples}>
                <td className="num">{r.num_examples.toLocaleString()} examples</td>
                <td className="num">{r.logical_batch.toLocaleString()}</td>
                <td className="num">{r.steps_per_round}</td>
                <td className="num">{num(r.noise_multiplier)}</td>
                <td className="num" style={over ? { color: "var(--bad)" } : undefined}>
                  {r.epsilon == null ? <span title="No finite guarantee">∞</span> : num(r.epsilon)}
                </td>
                <td className="num" style={noisy ? { color: "var(--bad)" } : undefined}>
                  {num(r.noise_to_signal)}
                </td>
              </tr>
            );
          })}
        </tbody>
      </table>
    </div>
  );
}

function PreviewBody({ preview }: { preview: Preview }) {
  const on = preview.mode !== "none";
  return (
    <>
      {on && (
        <>
          <PreviewTable preview={preview} />
          <p className="muted" style={{ fontSize: "0.85rem", marginTop: "0.5rem" }}>
            Epsilon at δ = {preview.delta.toExponential()} after all {preview.num_rounds} rounds (budget {preview.epsilon_budget}).{" "}
            {preview.dp_parameters == null
              ? "Noise-to-signal needs the model's modules (paste what fedlora-client inspect prints)."
              : `Noise-to-signal, over ${preview.dp_parameters.toLocaleString()} noised parameters: ${preview.noise_to_signal_basis}; above 1 the noise dominates.`}
          </p>
        </>
      )}
      {preview.warnings.length > 0 ? (
        <ul className="stack" aria-label="Privacy warnings" style={{ listStyle: "none", padding: 0, margin: on ? "0.6rem 0 0" : 0, gap: "0.4rem" }}>
          {preview.warnings.map((w, i) => (
            <li key={`${w.code}-${i}`} className="banner banner-warn" style={{ margin: 0 }}>
              {w.message}
            </li>
          ))}
        </ul>
      ) : (
        <p className="banner banner-ok" style={{ margin: "0.6rem 0 0" }}>
          No warnings: the noise stays below the signal and within the epsilon budget for these sizes.
        </p>
      )}
    </>
  );
}

/** The "Privacy preview" group of the new-federation form, for the form's current body. */
export function PrivacyPreview({ draft }: { draft: Record<string, unknown> }) {
  const [sizesText, setSizesText] = useState("");
  const sizes = parseSizes(sizesText);
  const request = sizes === undefined ? null : previewRequest(draft, sizes);
  const wanted = request ? JSON.stringify(request) : null;
  const key = useDebounced(wanted, DEBOUNCE_MS);
  const preview = useQuery({
    queryKey: ["dp-preview", key],
    queryFn: () => call(api.POST("/api/v1/federations/dp-preview", { body: JSON.parse(key!) as PreviewRequest })),
    enabled: key !== null,
    placeholderData: keepPreviousData,
    staleTime: Infinity,
    retry: false,
  });

  let content;
  if (wanted === null) {
    content = (
      <p className="muted">
        {sizes === undefined
          ? `Organization sizes: up to ${MAX_SIZES} whole numbers of examples (no thousands separators), comma-separated.`
          : "Fill in the global rank, number of rounds, clients per round and the DP noise (target epsilon or noise multiplier) to see what the privacy settings do."}
      </p>
    );
  } else if (key === null || preview.isPending) {
    content = <Loading label="Computing the privacy preview" />;
  } else if (preview.isError) {
    content = (
      <p className="banner banner-error" style={{ margin: 0 }}>
        No preview for these settings: {problem(preview.error)}
      </p>
    );
  } else if (preview.data) {
    content = <PreviewBody preview={preview.data} />;
  }

  return (
    <fieldset>
      <legend>Privacy preview</legend>
      <p className="help" style={{ marginTop: 0 }}>
        What these DP settings do to an organization of each size over the whole federation: its batch and steps, the
        noise multiplier, the epsilon it spends and how large the noise is next to the signal.
      </p>
      <div className="fields" style={{ marginBottom: "0.8rem" }}>
        <Field label="Organization sizes" help="Examples per organization to preview, comma-separated. Empty: 500, 5000 and 50000.">
          {(p) => <input {...p} inputMode="numeric" placeholder="500, 5000, 50000" value={sizesText} onChange={(e) => setSizesText(e.target.value)} />}
        </Field>
      </div>
      <div aria-live="polite" aria-busy={preview.isFetching || key !== wanted}>
        {content}
      </div>
    </fieldset>
  );
}
