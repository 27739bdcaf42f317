// Messages API JSON <-> claude_gateway.v1 protobuf-es messages, by the mapping rules at the top of
// chat.proto (the same rules as client/claude_gateway/codec.py):
//
// - field names are JSON keys; a oneof named `type` is chosen by the object's "type" value;
// - an object of a type the proto does not model goes whole into the `raw_json` arm;
// - a JSON null, an empty list, a value of an unexpected JSON type and an unknown key go into the
//   object's `extra` Struct;
// - key K holding a string where the proto has a list goes into `K_text`.
//
// So toApiJson(fromApiJson(schema, obj)) deep-equals obj. Both functions are pure; one plan per
// message type is built from its descriptor and cached.

import { create, fromJson, toJson, type DescField, type DescMessage, type JsonObject, type JsonValue } from "@bufbuild/protobuf";
import { ValueSchema, type Value } from "@bufbuild/protobuf/wkt";

const UNION = "type";
const RAW = "raw_json";
const EXTRA = "extra";
const STRUCT = "google.protobuf.Struct";
const VALUE = "google.protobuf.Value";
const INT32_MIN = -(2 ** 31);
const INT32_MAX = 2 ** 31 - 1;

type Kind = "scalar" | "message" | "struct" | "value" | "scalars" | "messages";

interface Field {
  readonly desc: DescField;
  readonly name: string;
  readonly local: string;
  readonly jsonKey: string;
  readonly kind: Kind;
  plan?: Plan;
}

interface Plan {
  readonly desc: DescMessage;
  readonly fields: Map<string, Field>; // by JSON key
  readonly byName: Map<string, Field>; // by proto field name, in field-number order
  readonly always: Field[]; // scalars without presence: always in the JSON
  readonly textForms: Map<string, Field>; // JSON key -> its `K_text` field
  arms?: Map<string, Field>; // union: "type" value -> arm field
  typedArm?: Field; // union arm that keeps "type" itself (taken when "type" is absent)
  unionLocal?: string;
  keepsType: boolean;
  extra?: Field;
}

/** An object that is a message, not a oneof, array or null: what protobuf-es messages and JSON objects are. */
type Obj = Record<string, unknown>;

const plans = new Map<string, Plan>();

function kindOf(f: DescField): Kind {
  if (f.fieldKind === "list") {
    return f.listKind === "message" ? "messages" : "scalars";
  }
  if (f.fieldKind === "message") {
    if (f.message.typeName === STRUCT) return "struct";
    if (f.message.typeName === VALUE) return "value";
    return "message";
  }
  if (f.fieldKind === "scalar") return "scalar";
  throw new Error(`${f.toString()}: ${f.fieldKind} fields are not part of the mapping`);
}

function planOf(desc: DescMessage): Plan {
  let plan = plans.get(desc.typeName);
  if (plan !== undefined) return plan;
  plan = {
    desc,
    fields: new Map(),
    byName: new Map(),
    always: [],
    textForms: new Map(),
    keepsType: false,
  };
  plans.set(desc.typeName, plan); // before recursing: messages refer to each other
  const union = desc.oneofs.find((o) => o.name === UNION);
  if (union !== undefined) {
    plan.arms = new Map();
    plan.unionLocal = union.localName;
  }
  const names = new Set(desc.fields.map((f) => f.name));
  for (const fd of [...desc.fields].sort((a, b) => a.number - b.number)) {
    const kind = kindOf(fd);
    let jsonKey = fd.name;
    if (fd.name.endsWith("_text") && names.has(fd.name.slice(0, -5))) jsonKey = fd.name.slice(0, -5);
    const f: Field = { desc: fd, name: fd.name, local: fd.localName, jsonKey, kind };
    if (fd.name === EXTRA) {
      plan.extra = f;
      continue;
    }
    if (jsonKey !== fd.name) plan.textForms.set(jsonKey, f);
    if (kind === "message" || kind === "messages") {
      f.plan = planOf((fd as DescField & { message: DescMessage }).message);
      if (plan.arms !== undefined && fd.oneof?.name === UNION && f.plan.keepsType && fd.name !== RAW) plan.typedArm = f;
    }
    if (plan.arms !== undefined && fd.oneof?.name === UNION && fd.name !== RAW) plan.arms.set(fd.name, f);
    if (kind === "scalar" && fd.fieldKind === "scalar" && fd.oneof === undefined && fd.presence === 2 /* IMPLICIT */) {
      plan.always.push(f);
    }
    plan.byName.set(fd.name, f);
    if (jsonKey === fd.name && !plan.fields.has(jsonKey)) plan.fields.set(jsonKey, f);
    if (fd.name === "type") plan.keepsType = true;
  }
  return plan;
}

function isObject(value: unknown): value is Obj {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

// ---------------------------------------------------------------------------------------------
// JSON -> proto

/** The message of type `schema` that the Messages API JSON object `json` stands for. */
export function fromApiJson<Desc extends DescMessage>(schema: Desc, json: JsonObject): ReturnType<typeof create<Desc>> {
  const message = create(schema);
  fill(message as unknown as Obj, json, planOf(schema));
  return message;
}

function fill(msg: Obj, obj: Obj, plan: Plan): void {
  if (plan.arms !== undefined) {
    const kind = obj["type"];
    const arm =
      typeof kind === "string" ? plan.arms.get(kind) : kind === undefined || kind === null ? plan.typedArm : undefined;
    if (arm === undefined) {
      const raw = plan.byName.get(RAW)!;
      msg[plan.unionLocal!] = {
        case: raw.local,
        value: create(raw.plan!.desc, { type: typeof kind === "string" ? kind : "", json: JSON.stringify(obj) } as never),
      };
      return;
    }
    const sub = create(arm.plan!.desc) as unknown as Obj;
    fillFields(sub, obj, arm.plan!, !arm.plan!.keepsType);
    msg[plan.unionLocal!] = { case: arm.local, value: sub };
    return;
  }
  fillFields(msg, obj, plan, false);
}

function fillFields(msg: Obj, obj: Obj, plan: Plan, skipType: boolean): void {
  let extra: JsonObject | undefined;
  for (const [key, value] of Object.entries(obj)) {
    const f = plan.fields.get(key);
    if (f === undefined) {
      if (skipType && key === "type") continue;
    } else if (put(msg, f, value, plan)) {
      continue;
    }
    extra ??= {};
    extra[key] = value as JsonValue;
  }
  if (extra !== undefined) {
    if (plan.extra === undefined) throw new Error(`${plan.desc.typeName} cannot hold keys ${Object.keys(extra).sort().join(", ")}`);
    msg[plan.extra.local] = { ...((msg[plan.extra.local] as JsonObject | undefined) ?? {}), ...extra };
  }
}

/** Store `value` in field `f`; false if the field cannot carry it exactly. */
function put(msg: Obj, f: Field, value: unknown, plan: Plan): boolean {
  switch (f.kind) {
    case "scalar":
      if (!scalarFits(f.desc, value)) return false;
      msg[f.local] = value;
      return true;
    case "message": {
      if (!isObject(value)) return textForm(msg, f, value, plan);
      const sub = create(f.plan!.desc) as unknown as Obj;
      fill(sub, value, f.plan!);
      msg[f.local] = sub;
      return true;
    }
    case "messages": {
      if (!Array.isArray(value) || value.length === 0) return textForm(msg, f, value, plan);
      if (!value.every(isObject)) return false;
      msg[f.local] = value.map((item) => {
        const sub = create(f.plan!.desc) as unknown as Obj;
        fill(sub, item, f.plan!);
        return sub;
      });
      return true;
    }
    case "struct":
      if (!isObject(value)) return false;
      msg[f.local] = value;
      return true;
    case "value":
      msg[f.local] = fromJson(ValueSchema, value as JsonValue);
      return true;
    case "scalars":
      if (!Array.isArray(value) || value.length === 0 || !value.every((v) => scalarFits(f.desc, v))) return false;
      msg[f.local] = value;
      return true;
  }
}

function textForm(msg: Obj, f: Field, value: unknown, plan: Plan): boolean {
  const text = plan.textForms.get(f.jsonKey);
  if (text === undefined || typeof value !== "string") return false;
  msg[text.local] = value;
  return true;
}

function scalarFits(fd: DescField, value: unknown): boolean {
  const scalar = (fd as { scalar?: number }).scalar;
  switch (scalar) {
    case 9: // STRING
      return typeof value === "string";
    case 5: // INT32
      return typeof value === "number" && Number.isInteger(value) && value >= INT32_MIN && value <= INT32_MAX;
    case 8: // BOOL
      return typeof value === "boolean";
    case 1: // DOUBLE
      return typeof value === "number";
    default:
      return false;
  }
}

// ---------------------------------------------------------------------------------------------
// proto -> JSON

/** The Messages API JSON object that `message` (of type `schema`) stands for. */
export function toApiJson<Desc extends DescMessage>(schema: Desc, message: ReturnType<typeof create<Desc>>): JsonObject {
  return dump(message as unknown as Obj, planOf(schema));
}

function dump(msg: Obj, plan: Plan): JsonObject {
  if (plan.arms !== undefined) {
    const union = msg[plan.unionLocal!] as { case?: string; value?: Obj };
    if (union.case === undefined || union.value === undefined) return {};
    const raw = plan.byName.get(RAW);
    if (raw !== undefined && union.case === raw.local) return JSON.parse(union.value["json"] as string) as JsonObject;
    const arm = [...plan.arms.values()].find((a) => a.local === union.case)!;
    const out: JsonObject = arm.plan!.keepsType ? {} : { type: arm.name };
    dumpFields(union.value, arm.plan!, out);
    return out;
  }
  const out: JsonObject = {};
  dumpFields(msg, plan, out);
  return out;
}

function dumpFields(msg: Obj, plan: Plan, out: JsonObject): void {
  for (const f of plan.always) out[f.jsonKey] = msg[f.local] as JsonValue;
  for (const f of plan.byName.values()) {
    const value = msg[f.local];
    switch (f.kind) {
      case "scalar":
        if (value !== undefined && (f.desc.fieldKind !== "scalar" || f.desc.presence !== 2 || !isZero(value))) {
          out[f.jsonKey] = value as JsonValue;
        }
        break;
      case "message":
        if (value !== undefined) out[f.name] = dump(value as Obj, f.plan!);
        break;
      case "messages":
        if ((value as Obj[]).length > 0) out[f.name] = (value as Obj[]).map((item) => dump(item, f.plan!));
        break;
      case "scalars":
        if ((value as JsonValue[]).length > 0) out[f.name] = [...(value as JsonValue[])];
        break;
      case "struct":
        if (value !== undefined) out[f.name] = value as JsonObject;
        break;
      case "value":
        if (value !== undefined) out[f.name] = toJson(ValueSchema, value as Value);
        break;
    }
  }
  if (plan.extra !== undefined && msg[plan.extra.local] !== undefined) Object.assign(out, msg[plan.extra.local]);
}

function isZero(value: unknown): boolean {
  return value === "" || value === 0 || value === false;
}
