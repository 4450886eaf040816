import { useMemo, useState, type FormEvent } from "react";
import { Link, useLocation } from "wouter";
import { useMutation, useQueryClient } from "@tanstack/react-query";
import { api, call } from "../api/client";
import type { components } from "../api/client";
import formSchemas from "../api/form-schemas.gen.json";
import { useServerErrors } from "../components/form";
import { buildBody, fieldPaths, initialValues, labelOf, resolve, SchemaFields, type JsonSchema, type Schemas, type Values } from "../components/SchemaForm";
import { Field, PageHeader } from "../components/ui";

const schemas = formSchemas.schemas as unknown as Schemas;
const root: JsonSchema = { $ref: `#/components/schemas/${formSchemas.root}` };

/** Strategy names: an enum in the schema, or the "One of: a, b." list in its description. */
function strategyNames(s: JsonSchema | undefined): string[] {
  if (s?.enum) return s.enum.map(String);
  const m = /One of: ([^.]+)\./.exec(s?.description ?? "");
  return m ? m[1].split(",").map((x) => x.trim()) : [];
}

function paramsSchemaOf(strategy: string): JsonSchema | undefined {
  const key = Object.keys(schemas).find((k) => k.toLowerCase() === `${strategy.toLowerCase()}params`);
  return key ? schemas[key] : undefined;
}

const rootProps = schemas[formSchemas.root]?.properties ?? {};
const STRATEGIES = strategyNames(rootProps.strategy);
/** Nested settings (model, training, dp) get a fieldset each. */
const groupNames = Object.keys(rootProps).filter((k) => {
  const s = resolve(rootProps[k], schemas).schema;
  return k !== "strategy_params" && s.type === "object" && s.properties !== undefined;
});

function initial(): Values {
  const v = initialValues(root, schemas);
  if (!v.strategy && STRATEGIES.length) v.strategy = STRATEGIES.includes("fslora") ? "fslora" : STRATEGIES[0];
  const ps = paramsSchemaOf(v.strategy);
  return ps ? { ...v, ...initialValues(ps, schemas, "strategy_params") } : v;
}

export default function NewFederationPage() {
  const [, navigate] = useLocation();
  const qc = useQueryClient();
  const [values, setValues] = useState<Values>(initial);
  const strategy = values.strategy ?? "";
  const paramsSchema = paramsSchemaOf(strategy);
  const known = useMemo(
    () => [...fieldPaths(root, schemas), ...(paramsSchema ? fieldPaths(paramsSchema, schemas, "strategy_params") : [])],
    [paramsSchema],
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
    setValues((v) => {
      if (path !== "strategy") return { ...v, [path]: value };
      const rest = Object.fromEntries(Object.entries(v).filter(([k]) => !k.startsWith("strategy_params")));
      const ps = paramsSchemaOf(value);
      return { ...rest, strategy: value, ...(ps ? initialValues(ps, schemas, "strategy_params") : {}) };
    });
  }

  function submit(e: FormEvent) {
    e.preventDefault();
    const body = buildBody(root, schemas, values);
    body.strategy_params = paramsSchema ? buildBody(paramsSchema, schemas, values, "strategy_params") : body.strategy_params ?? {};
    create.mutate(body);
  }

  const fieldProps = { schemas, values, errors: errors.fields, onChange };

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
            <Field label="Strategy *" help={paramsSchema?.description ?? rootProps.strategy?.description} error={errors.fields.strategy}>
              {(p) =>
                STRATEGIES.length ? (
                  <select {...p} value={strategy} onChange={(e) => onChange("strategy", e.target.value)}>
                    {STRATEGIES.map((s) => (
                      <option key={s} value={s}>
                        {s}
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
            {paramsSchema ? (
              <SchemaFields schema={paramsSchema} {...fieldProps} prefix="strategy_params" />
            ) : (
              <SchemaFields schema={{ type: "object", properties: { strategy_params: rootProps.strategy_params ?? { type: "object" } } }} {...fieldProps} />
            )}
          </div>
        </fieldset>
        {groupNames.map((name) => (
          <fieldset key={name}>
            <legend>{labelOf(name, rootProps[name])}</legend>
            {errors.fields[name] && (
              <p className="field-error" role="alert">
                {errors.fields[name]}
              </p>
            )}
            <SchemaFields schema={rootProps[name]} {...fieldProps} prefix={name} />
          </fieldset>
        ))}
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
