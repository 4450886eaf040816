// Draws form fields from the JSON schemas the API publishes (see scripts/gen-client.mjs), so
// the create-federation form always shows every setting with the server's names, limits,
// defaults and descriptions. Values are kept as strings per field path ("dp.clip_norm") and
// converted to the schema's types on submit; empty optional fields are left to the server's
// defaults. Hand-written because no maintained JSON-schema form library is small enough to
// justify its weight here (the common ones add 100+ KB gzipped) for this one form.
import type { ReactNode } from "react";
import { Field } from "./ui";

export interface JsonSchema {
  type?: string | string[];
  title?: string;
  description?: string;
  default?: unknown;
  enum?: unknown[];
  const?: unknown;
  properties?: Record<string, JsonSchema>;
  required?: string[];
  items?: JsonSchema;
  prefixItems?: JsonSchema[];
  anyOf?: JsonSchema[];
  oneOf?: JsonSchema[];
  allOf?: JsonSchema[];
  $ref?: string;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  exclusiveMaximum?: number;
  minLength?: number;
  maxLength?: number;
  additionalProperties?: boolean | JsonSchema;
}

export type Schemas = Record<string, JsonSchema>;
export type Values = Record<string, string>;

interface Resolved {
  schema: JsonSchema;
  nullable: boolean;
}

/** Follows $ref / allOf and unwraps `anyOf: [X, null]` into X with nullable = true. */
export function resolve(schema: JsonSchema, schemas: Schemas): Resolved {
  let s = schema;
  let nullable = false;
  for (let i = 0; i < 8; i++) {
    if (s.$ref) {
      const target = schemas[s.$ref.split("/").pop()!] ?? {};
      s = { ...target, ...s, $ref: undefined, description: s.description ?? target.description, default: s.default ?? target.default };
      continue;
    }
    if (s.allOf?.length === 1) {
      s = { ...s.allOf[0], ...s, allOf: undefined };
      continue;
    }
    const alts = s.anyOf ?? s.oneOf;
    if (alts) {
      const nonNull = alts.filter((a) => a.type !== "null");
      if (nonNull.length < alts.length) nullable = true;
      if (nonNull.length === 1) {
        s = { ...nonNull[0], description: s.description ?? nonNull[0].description, default: s.default, title: s.title ?? nonNull[0].title };
        continue;
      }
    }
    break;
  }
  return { schema: s, nullable };
}

type Kind = "object" | "enum" | "boolean" | "integer" | "number" | "string" | "list" | "tuple" | "json";

function kindOf(s: JsonSchema): Kind {
  if (s.enum || s.const !== undefined) return "enum";
  const t = Array.isArray(s.type) ? s.type.find((x) => x !== "null") : s.type;
  if (t === "object" && s.properties) return "object";
  if (t === "boolean") return "boolean";
  if (t === "integer") return "integer";
  if (t === "number") return "number";
  if (t === "string") return "string";
  if (t === "array" && s.prefixItems) return "tuple";
  if (t === "array" && s.items && ["string", "integer", "number"].includes(String(s.items.type))) return "list";
  return "json";
}

const WORDS: Record<string, string> = { id: "ID", lr: "LR", dp: "DP", num: "Number of", seq: "sequence", len: "length" };

/** A label from the field's name ("base_model_id" -> "Base model ID"); titles of models are not names. */
export function labelOf(name: string, _s?: JsonSchema): string {
  const text = name
    .split("_")
    .map((w) => WORDS[w] ?? w)
    .join(" ");
  return text.charAt(0).toUpperCase() + text.slice(1);
}

function defaultText(s: JsonSchema, kind: Kind): string {
  const d = s.default;
  if (d === undefined || d === null) return "";
  if (kind === "tuple" || kind === "list") return (d as unknown[]).join(", ");
  if (kind === "json") return JSON.stringify(d, null, 2);
  return String(d);
}

/** Initial string values for every leaf of an object schema (its defaults). */
export function initialValues(schema: JsonSchema, schemas: Schemas, prefix = ""): Values {
  const out: Values = {};
  const { schema: s } = resolve(schema, schemas);
  for (const [name, prop] of Object.entries(s.properties ?? {})) {
    const path = prefix ? `${prefix}.${name}` : name;
    const r = resolve(prop, schemas);
    const kind = kindOf(r.schema);
    if (kind === "object") Object.assign(out, initialValues(r.schema, schemas, path));
    else if (kind === "enum" && r.schema.default === undefined && !r.nullable)
      out[path] = String((r.schema.enum ?? [r.schema.const])[0] ?? "");
    else out[path] = defaultText(r.schema, kind);
  }
  return out;
}

/** Every leaf field path of an object schema (to map server messages to fields). */
export function fieldPaths(schema: JsonSchema, schemas: Schemas, prefix = ""): string[] {
  const { schema: s } = resolve(schema, schemas);
  return Object.entries(s.properties ?? {}).flatMap(([name, prop]) => {
    const path = prefix ? `${prefix}.${name}` : name;
    const r = resolve(prop, schemas);
    return kindOf(r.schema) === "object" ? [path, ...fieldPaths(r.schema, schemas, path)] : [path];
  });
}

/** Converts one string to the schema's type; `undefined` means "leave it out". */
function convert(text: string, s: JsonSchema, kind: Kind, nullable: boolean, required: boolean): unknown {
  const t = text.trim();
  if (t === "" && kind !== "string" && kind !== "boolean") return required ? (nullable ? null : "") : undefined;
  switch (kind) {
    case "boolean":
      return t === "true";
    case "integer":
    case "number": {
      const n = Number(t);
      return Number.isFinite(n) ? n : t; // let the server name a non-number
    }
    case "list":
    case "tuple": {
      const parts = t.split(",").map((x) => x.trim()).filter(Boolean);
      const itemType = kind === "tuple" ? s.prefixItems?.[0]?.type : s.items?.type;
      return itemType === "integer" || itemType === "number" ? parts.map(Number) : parts;
    }
    case "json":
      try {
        return JSON.parse(t);
      } catch {
        return t; // the server answers with the field's message
      }
    case "enum": {
      const match = (s.enum ?? [s.const]).find((v) => String(v) === t);
      return match ?? t;
    }
    default:
      return t === "" && !required ? undefined : text;
  }
}

/** Builds the request body of an object schema from the form's string values. */
export function buildBody(schema: JsonSchema, schemas: Schemas, values: Values, prefix = ""): Record<string, unknown> {
  const { schema: s } = resolve(schema, schemas);
  const body: Record<string, unknown> = {};
  const required = new Set(s.required ?? []);
  for (const [name, prop] of Object.entries(s.properties ?? {})) {
    const path = prefix ? `${prefix}.${name}` : name;
    const r = resolve(prop, schemas);
    const kind = kindOf(r.schema);
    const v =
      kind === "object"
        ? buildBody(r.schema, schemas, values, path)
        : convert(values[path] ?? "", r.schema, kind, r.nullable, required.has(name));
    if (v !== undefined) body[name] = v;
  }
  return body;
}

function hint(s: JsonSchema): string {
  const parts: string[] = [];
  const lo = s.minimum ?? s.exclusiveMinimum;
  const hi = s.maximum ?? s.exclusiveMaximum;
  if (lo !== undefined && hi !== undefined)
    parts.push(`${s.exclusiveMinimum !== undefined ? "(" : "["}${lo}, ${hi}${s.exclusiveMaximum !== undefined ? ")" : "]"}`);
  else if (lo !== undefined) parts.push(s.exclusiveMinimum !== undefined ? `> ${lo}` : `≥ ${lo}`);
  else if (hi !== undefined) parts.push(s.exclusiveMaximum !== undefined ? `< ${hi}` : `≤ ${hi}`);
  return parts.join(" ");
}

export function SchemaFields({
  schema,
  schemas,
  values,
  errors,
  onChange,
  prefix = "",
  skip = [],
  renderOverride,
}: {
  schema: JsonSchema;
  schemas: Schemas;
  values: Values;
  errors: Record<string, string>;
  onChange: (path: string, value: string) => void;
  prefix?: string;
  /** Top-level property names drawn elsewhere. */
  skip?: string[];
  /** Custom drawing for some paths (return undefined to use the default). */
  renderOverride?: (path: string, s: JsonSchema) => ReactNode | undefined;
}) {
  const { schema: s } = resolve(schema, schemas);
  const required = new Set(s.required ?? []);
  const leaves: ReactNode[] = [];
  const groups: ReactNode[] = [];
  for (const [name, prop] of Object.entries(s.properties ?? {})) {
    if (!prefix && skip.includes(name)) continue;
    const path = prefix ? `${prefix}.${name}` : name;
    const r = resolve(prop, schemas);
    const kind = kindOf(r.schema);
    const custom = renderOverride?.(path, r.schema);
    if (custom !== undefined) {
      (kind === "object" ? groups : leaves).push(<div key={path}>{custom}</div>);
      continue;
    }
    if (kind === "object") {
      groups.push(
        <fieldset key={path}>
          <legend>{labelOf(name, r.schema)}</legend>
          {r.schema.description && <p className="help" style={{ marginTop: 0 }}>{r.schema.description}</p>}
          {errors[path] && <p className="field-error" role="alert">{errors[path]}</p>}
          <SchemaFields schema={r.schema} schemas={schemas} values={values} errors={errors} onChange={onChange} prefix={path} renderOverride={renderOverride} />
        </fieldset>,
      );
      continue;
    }
    const label = labelOf(name, r.schema);
    const mandatory = required.has(name) && r.schema.default === undefined;
    const range = hint(r.schema);
    const help = [r.schema.description, range && `Range ${range}.`, r.nullable && !required.has(name) ? "Optional." : ""]
      .filter(Boolean)
      .join(" ");
    const value = values[path] ?? "";
    const set = (v: string) => onChange(path, v);
    leaves.push(
      <Field key={path} label={label} required={mandatory} help={help || null} error={errors[path]}>
        {(p) => {
          switch (kind) {
            case "boolean":
              return (
                <select {...p} value={value || "false"} onChange={(e) => set(e.target.value)}>
                  <option value="false">No</option>
                  <option value="true">Yes</option>
                </select>
              );
            case "enum":
              return (
                <select {...p} value={value} onChange={(e) => set(e.target.value)}>
                  {r.nullable && <option value="">—</option>}
                  {(r.schema.enum ?? [r.schema.const]).map((v) => (
                    <option key={String(v)} value={String(v)}>
                      {String(v)}
                    </option>
                  ))}
                </select>
              );
            case "integer":
            case "number":
              return (
                <input {...p} inputMode={kind === "integer" ? "numeric" : "decimal"} value={value} onChange={(e) => set(e.target.value)} />
              );
            case "json":
              return <textarea {...p} rows={4} className="mono" value={value} onChange={(e) => set(e.target.value)} />;
            default:
              return (
                <input
                  {...p}
                  value={value}
                  placeholder={kind === "list" || kind === "tuple" ? "comma-separated" : undefined}
                  onChange={(e) => set(e.target.value)}
                />
              );
          }
        }}
      </Field>,
    );
  }
  return (
    <>
      {leaves.length > 0 && <div className="fields">{leaves}</div>}
      {groups.length > 0 && <div className="stack" style={{ marginTop: leaves.length ? "1rem" : 0 }}>{groups}</div>}
    </>
  );
}
