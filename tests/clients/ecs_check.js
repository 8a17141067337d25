// Checks Elastic Common Schema documents, one JSON object per line on
// stdin, against the ECS 8.11 field definitions as Elastic publishes them
// (the @elastic/ecs package, installed by scripts/install-test-deps.sh into
// RUSE_TEST_NODE, default /var/tmp/ruse-test-node).
//
// Every field outside the custom `ruse` namespace must be an ECS field,
// of its ECS type (keyword, long, float, date, ip, boolean, object), an
// array where ECS normalises it to one, and one of its allowed values
// where ECS lists them (event.kind, event.category, event.type, …), with
// event.type among those its event.category expects. Prints one line per
// document; exits 1 if any is invalid.
"use strict";
const path = require("path");
const net = require("net");
const readline = require("readline");

const prefix = process.env.RUSE_TEST_NODE || "/var/tmp/ruse-test-node";
const { EcsFlat } = require(path.join(prefix, "node_modules/@elastic/ecs/build/commonjs/ecs_flat.js"));
const CUSTOM = new Set(["ruse"]);

function typeOk(type, v) {
  switch (type) {
    case "keyword": case "constant_keyword": case "wildcard": case "text": case "match_only_text":
      return typeof v === "string";
    case "long": case "integer": case "short": case "byte": case "unsigned_long":
      return Number.isInteger(v);
    case "float": case "half_float": case "scaled_float": case "double":
      return typeof v === "number";
    case "boolean":
      return typeof v === "boolean";
    case "date":
      return typeof v === "string" && !Number.isNaN(Date.parse(v));
    case "ip":
      return typeof v === "string" && net.isIP(v) !== 0;
    default:
      return false;
  }
}

function check(doc) {
  const problems = [];
  const leaves = [];
  (function walk(obj, prefix) {
    for (const [k, v] of Object.entries(obj)) {
      const name = prefix ? `${prefix}.${k}` : k;
      if (!prefix && CUSTOM.has(k)) continue;
      const def = EcsFlat[name];
      if (def && (def.type === "object" || def.type === "flattened")) {
        if (v === null || typeof v !== "object" || Array.isArray(v)) {
          problems.push(`${name}: an ECS ${def.type}, got ${JSON.stringify(v)}`);
        } else if (name === "labels") {
          for (const [lk, lv] of Object.entries(v)) {
            if (typeof lv !== "string") problems.push(`labels.${lk}: labels are keywords (strings)`);
          }
        }
        continue;
      }
      if (v !== null && typeof v === "object" && !Array.isArray(v)) {
        walk(v, name);
      } else {
        leaves.push([name, v]);
      }
    }
  })(doc, "");
  const values = {};
  for (const [name, v] of leaves) {
    const def = EcsFlat[name];
    if (!def) {
      problems.push(`${name}: not an ECS field`);
      continue;
    }
    const isArray = Array.isArray(v);
    if ((def.normalize || []).includes("array") && !isArray) {
      problems.push(`${name}: ECS normalises it to an array`);
    }
    const items = isArray ? v : [v];
    for (const item of items) {
      if (!typeOk(def.type, item)) problems.push(`${name}: ${JSON.stringify(item)} is not of ECS type ${def.type}`);
    }
    if (def.allowed_values) {
      const allowed = def.allowed_values.map((a) => a.name);
      for (const item of items) {
        if (!allowed.includes(item)) problems.push(`${name}: ${JSON.stringify(item)} is not one of ${allowed.join(", ")}`);
      }
    }
    values[name] = items;
  }
  for (const category of values["event.category"] || []) {
    const spec = (EcsFlat["event.category"].allowed_values || []).find((a) => a.name === category);
    for (const t of values["event.type"] || []) {
      if (spec && spec.expected_event_types && !spec.expected_event_types.includes(t)) {
        problems.push(`event.type ${t} is not one event.category ${category} expects (${spec.expected_event_types.join(", ")})`);
      }
    }
  }
  return problems;
}

let n = 0, bad = 0;
const rl = readline.createInterface({ input: process.stdin });
rl.on("line", (line) => {
  if (!line.trim()) return;
  n += 1;
  const problems = check(JSON.parse(line));
  if (problems.length) {
    bad += 1;
    console.log(`${n}: INVALID: ${problems.join("; ")}`);
  } else {
    console.log(`${n}: valid ECS ${EcsFlat["ecs.version"] ? "8.11" : ""}`.trim());
  }
});
rl.on("close", () => process.exit(bad ? 1 : 0));
