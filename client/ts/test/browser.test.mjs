// The root module is for any transport, browsers included: nothing it loads may need Node.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

const DIST = new URL('../dist/', import.meta.url);

/** Every module the compiled root module reaches inside the package, and the packages it imports. */
function reach(entry) {
  const files = new Set();
  const packages = new Set();
  const todo = [new URL(entry, DIST)];
  while (todo.length > 0) {
    const url = todo.pop();
    if (files.has(url.href)) continue;
    files.add(url.href);
    const source = readFileSync(url, 'utf8');
    for (const [, spec] of source.matchAll(/(?:^|\n)\s*(?:import|export)[^'"]*?from\s+['"]([^'"]+)['"]/g)) {
      if (spec.startsWith('.')) todo.push(new URL(spec, url));
      else packages.add(spec);
    }
    assert.doesNotMatch(source, /\bprocess\.|\bBuffer\b|\brequire\(/, `${url.pathname} uses a Node global`);
  }
  return { files, packages };
}

test('the root module loads no Node built-in and no Node transport', () => {
  const { files, packages } = reach('index.js');
  assert.ok(files.size >= 7);
  for (const name of packages) {
    assert.ok(!name.startsWith('node:') && name !== '@connectrpc/connect-node', `index.js reaches ${name}`);
  }
  assert.ok(packages.has('@connectrpc/connect'));
});
