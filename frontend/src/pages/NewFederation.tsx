import { useEffect, useMemo, useState, type FormEvent } from "react";
import { Link, useLocation } from "wouter";
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { api, call } from "../api/client";
import type { components } from "../api/client";
import formSchemas from "../api/form-schemas.gen.json";
import { useServerErrors } from "../components/form";
import { buildBody, fieldPaths, initialValues, labelOf, resolve, SchemaFields, type JsonSchema, type Schemas, type Values } from "../components/SchemaForm";
import { PrivacyPreview } from "../components/PrivacyPreview";
import { Loading } from "../components/states";
import { Field, PageHeader } from "../components/ui";

const schemas = formSchemas.schemas as unknown as Schemas;
const root: JsonSchema = { $ref: `#/components/schemas/${formSchemas.root}` };

/** Strategy names from the schema: an enum, or the "One of: a, b." list in its description. */
function namesFromSchema(s: JsonSchema | undefined): string[] {
  if (s?.enum) return s.enum.map(String);
  const m = /One of: ([^.]+)\./.exec(s?.description ?? "");
  return m ? m[1].split(",").map((x) => x.trim()) : [];
}

const rootProps = schemas[formSchemas.root]?.properties ?? {};
/** Nested settings (model, training, dp) get a fieldset each. */
const groupNames = Object.keys(rootProps).filter((k) => {
  const s = resolve(rootProps[k], schemas).schema;
  return k !== "strategy_params" && s.type === "object" && s.properties !== undefined;
});

const GROUP_TITLES: Record<string, string> = {
  model: "Base model",
  training: "Local training",
  dp: "Differential privacy",
};

type Strategy = components["schemas"]["StrategyPublic"];

/** A strategy's parameter schema, with its own $defs resolvable next to the API's schemas. */
function paramsOf(strategies: Strategy[] | undefined, name: string): { schema: JsonSchema; schemas: Schemas } | null {
  const st = strategies?.find((x) => x.name === name);
  if (!st) return null;
  const schema = st.params_schema as JsonSchema & { $defs?: Schemas };
  return { schema, schemas: { ...schemas, ...(schema.$defs ?? {}) } };
}

/**
 * The form's starting values: the schema's defaults, plus a target epsilon, so the default
 * sample-level DP is complete as it stands (the server needs exactly one of noise_multiplier
 * and target_epsilon, and has a default for neither).
 */
const DEFAULT_TARGET_EPSILON = "8";
function startValues(): Values {
  const v = initialValues(root, schemas);
  if (!v["dp.noise_multiplier"] && !v["dp.target_epsilon"]) v["dp.target_epsilon"] = DEFAULT_TARGET_EPSILON;
  return v;
}

/** Filling one of the two ways to set the DP noise empties the other. */
const EXCLUSIVE: Record<string, string> = {
  "dp.noise_multiplier": "dp.target_epsilon",
  "dp.target_epsilon": "dp.noise_multiplier",
};

/**
 * `fedlora-client inspect` prints the whole model spec ({fingerprint, modules,
 * extra_trainable}); pasted into any of the model's fields, it fills all of them (and the
 * task type and target modules, when the output names them). Null for anything else.
 */
function inspectOutput(text: string): Values | null {
  if (!text.trim().startsWith("{")) return null;
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    return null;
  }
  if (!doc || typeof doc !== "object" || Array.isArray(doc)) return null;
  const spec = doc as Record<string, unknown>;
  if (typeof spec.modules !== "object" || !spec.modules || !("fingerprint" in spec || "extra_trainable" in spec)) return null;
  const out: Values = {
    "model.modules": JSON.stringify(spec.modules, null, 2),
    "model.extra_trainable": JSON.stringify(spec.extra_trainable ?? {}, null, 2),
  };
  if (typeof spec.fingerprint === "string") out["model.fingerprint"] = spec.fingerprint;
  if (typeof spec.task_type === "string") out.task_type = spec.task_type;
  if (Array.isArray(spec.target_modules)) out.target_modules = spec.target_modules.join(", ");
  return out;
}

function withParams(v: Values, strategies: Strategy[] | undefined, name: string): Values {
  const rest = Object.fromEntries(Object.entries(v).filter(([k]) => !k.startsWith("strategy_params.")));
  const p = paramsOf(strategies, name);
  return { ...rest, strategy: name, ...(p ? initialValues(p.schema, p.schemas, "strategy_params") : {}) };
}

export default function NewFederationPage() {
  const [, navigate] = useLocation();
  const qc = useQueryClient();
  const strategies = useQuery({
    queryKey: ["strategies"],
    queryFn: () => call(api.GET("/api/v1/strategies")),
    staleTime: Infinity,
  });
  const names = strategies.data?.map((x) => x.name) ?? namesFromSchema(rootProps.strategy);
  const [values, setValues] = useState<Values>(startValues);
  // Preselect the platform's recommended strategy (the quality benchmark's best method).
  const recommended = strategies.data?.find((x) => x.recommended)?.name;
  const strategy = values.strategy || recommended || (names[0] ?? "");
  const params = paramsOf(strategies.data, strategy);
  // Draw the chosen strategy's defaults once its schema has arrived.
  useEffect(() => {
    if (params && !Object.keys(values).some((k) => k.startsWith("strategy_params."))) {
      setValues((v) => withParams(v, strategies.data, strategy));
    }
  }, [params, strategy, strategies.data, values]);
  const known = useMemo(
    () => [...fieldPaths(root, schemas), ...(params ? fieldPaths(params.schema, params.schemas, "strategy_params") : [])],
    [params],
  );
  const errors = useServerErrors(known);

  const create = useMutation({
    mutationFn: (body: Record<string, unknown>) =>
      call(api.POST("/api/v1/federations", { body: body as components["schemas"]["FederationCreate"] })),
    onSuccess: (f) => {
      void qc.invalidateQueries({ queryKey: ["federations"] });
      navigate(`/federations/${f.id}`);
    },
    onError: errors.capture,
  });

  function onChange(path: string, value: string) {
    const pasted = path.startsWith("model.") ? inspectOutput(value) : null;
    setValues((v) => {
      if (path === "strategy") return withParams(v, strategies.data, value);
      if (pasted) return { ...v, ...pasted };
      const other = EXCLUSIVE[path];
      return other && value.trim() ? { ...v, [path]: value, [other]: "" } : { ...v, [path]: value };
    });
  }

  function submit(e: FormEvent) {
    e.preventDefault();
    const body = buildBody(root, schemas, { ...values, strategy });
    body.strategy_params = params ? buildBody(params.schema, params.schemas, values, "strategy_params") : (body.strategy_params ?? {});
    create.mutate(body);
  }

  const fieldProps = { schemas, values, errors: errors.fields, onChange };
  // The body as it would be sent (without the strategy's parameters): the privacy preview's input.
  const draft = useMemo(() => buildBody(root, schemas, values), [values]);

  return (
    <>
      <div className="breadcrumb">
        <Link href="/federations">Federations</Link> /
      </div>
      <PageHeader title="New federation" subtitle="Every setting, with the server's own limits and defaults." />
      <form className="stack card" onSubmit={submit} noValidate aria-label="New federation">
        <fieldset>
          <legend>Federation</legend>
          <SchemaFields schema={root} {...fieldProps} skip={["strategy", "strategy_params", ...groupNames]} />
        </fieldset>
        <fieldset>
          <legend>Aggregation strategy</legend>
          <div className="fields">
            <Field
              label="Strategy"
              required
              help={strategies.data?.find((x) => x.name === strategy)?.description ?? rootProps.strategy?.description}
              error={errors.fields.strategy}
            >
              {(p) =>
                names.length ? (
                  <select {...p} value={strategy} onChange={(e) => onChange("strategy", e.target.value)}>
                    {names.map((s) => (
                      <option key={s} value={s}>
                        {s === recommended ? `${s} (recommended)` : s}
                      </option>
                    ))}
                  </select>
                ) : (
                  <input {...p} value={strategy} onChange={(e) => onChange("strategy", e.target.value)} />
                )
              }
            </Field>
          </div>
          {errors.fields.strategy_params && (
            <p className="field-error" role="alert">
              {errors.fields.strategy_params}
            </p>
          )}
          <div style={{ marginTop: "1rem" }}>
            {strategies.isPending ? (
              <Loading label="Loading strategy parameters" />
            ) : params ? (
              <SchemaFields schema={params.schema} {...fieldProps} schemas={params.schemas} prefix="strategy_params" />
            ) : (
              <SchemaFields schema={{ type: "object", properties: { strategy_params: rootProps.strategy_params ?? { type: "object" } } }} {...fieldProps} />
            )}
          </div>
        </fieldset>
        {groupNames.map((name) => (
          <fieldset key={name}>
            <legend>{GROUP_TITLES[name] ?? labelOf(name)}</legend>
            {errors.fields[name] && (
              <p className="field-error" role="alert">
                {errors.fields[name]}
              </p>
            )}
            <SchemaFields schema={rootProps[name]} {...fieldProps} prefix={name} />
          </fieldset>
        ))}
        <PrivacyPreview draft={draft} />
        {errors.form && (
          <p className="banner banner-error" role="alert">
            {errors.form}
          </p>
        )}
        <div className="form-actions">
          <button type="submit" className="btn btn-primary" disabled={create.isPending}>
            {create.isPending ? "Creating…" : "Create federation"}
          </button>
          <Link href="/federations" className="btn btn-ghost">
            Cancel
          </Link>
        </div>
      </form>
    </>
  );
}
