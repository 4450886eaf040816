import { useState } from "react";
import { ApiError, errorMessage } from "../api/client";

/**
 * Puts a message that is not tied to a field by its location (a model-level check such as
 * "min_clients (3) exceeds clients_per_round (2); ...") next to the field it starts with, and
 * splits "strategy_params for 'x' are invalid: a: ...; b: ..." into one message per parameter.
 */
export function attribute(message: string, known: readonly string[]): Record<string, string> {
  const text = message.replace(/^Value error, /, "");
  const params = /^strategy_params for '[^']*' are invalid: (.*)$/s.exec(text);
  if (params) {
    const out: Record<string, string> = {};
    for (const part of params[1].split("; ")) {
      const m = /^([\w.]+): (.*)$/s.exec(part);
      const key = m ? `strategy_params.${m[1]}` : "strategy_params";
      out[known.includes(key) ? key : "strategy_params"] = m && !known.includes(key) ? part : (m?.[2] ?? part);
    }
    return out;
  }
  const byLength = [...known].sort((a, b) => b.length - a.length);
  const head = byLength.find((k) => new RegExp(`^${k.replace(/\./g, "\\.")}\\b`).test(text));
  return head ? { [head]: text } : {};
}

/**
 * Server-side validation state of one form: field messages from a 422 (keyed by the field's
 * path, e.g. "dp.epsilon_budget"), and a form-level message for everything else.
 */
export function useServerErrors(knownFields: readonly string[] = []) {
  const [fields, setFields] = useState<Record<string, string>>({});
  const [form, setForm] = useState<string | null>(null);

  function capture(e: unknown) {
    if (e instanceof ApiError && (e.status === 422 || e.status === 400 || e.status === 409)) {
      const out: Record<string, string> = {};
      const loose: string[] = [];
      const entries = Object.keys(e.fields).length ? Object.entries(e.fields) : [["", e.message]];
      for (const [key, msg] of entries) {
        if (key && knownFields.includes(key)) {
          out[key] = msg;
          continue;
        }
        const placed = attribute(key ? `${key}: ${msg}` : msg, knownFields);
        if (Object.keys(placed).length) Object.assign(out, placed);
        else loose.push(key ? `${key}: ${msg}` : msg);
      }
      setFields(out);
      const n = Object.keys(out).length;
      setForm(
        [n ? `The server rejected ${n} field${n === 1 ? "" : "s"}; see the messages next to them.` : "", ...loose]
          .filter(Boolean)
          .join(" "),
      );
      return;
    }
    setFields({});
    setForm(errorMessage(e));
  }

  function clear() {
    setFields({});
    setForm(null);
  }

  return { fields, form, capture, clear };
}
