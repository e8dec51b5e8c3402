// Type-checks every dashboards/*.json (or the files given as arguments) against the Dashboard
// type of @grafana/schema.
//
// Each dashboard is embedded as an object literal in an in-memory TypeScript module,
//     export const dashboard: Loosen<Dashboard> = { ...the JSON... };
// rather than imported with resolveJsonModule: an imported JSON file widens every string to
// `string`, so it could never match a union of literals, and TypeScript skips the excess property
// check for it. As a literal, a misspelt or unknown field is an error too.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..');
const files = process.argv.length > 2
  ? process.argv.slice(2).map((f) => path.resolve(f))
  : fs.readdirSync(path.join(root, 'dashboards'))
      .filter((f) => f.endsWith('.json'))
      .sort()
      .map((f) => path.join(root, 'dashboards', f));
if (files.length === 0) {
  console.error('no dashboards to check');
  process.exit(1);
}

const config = ts.readConfigFile(path.join(here, 'tsconfig.json'), ts.sys.readFile);
if (config.error) {
  console.error(ts.flattenDiagnosticMessageText(config.error.messageText, '\n'));
  process.exit(1);
}
const { options } = ts.parseJsonConfigFileContent(config.config, ts.sys, here);

// Virtual module per dashboard, next to loosen.ts so that imports resolve from this folder.
const virtual = new Map();
for (const file of files) {
  const json = JSON.parse(fs.readFileSync(file, 'utf8'));
  const name = path.join(here, `__${path.basename(file, '.json')}.dashboard.ts`);
  virtual.set(name, {
    source: file,
    text:
      "import type { Dashboard } from '@grafana/schema';\n" +
      "import type { Loosen } from './loosen';\n" +
      `export const dashboard: Loosen<Dashboard> = ${JSON.stringify(json, null, 2)};\n`,
  });
}

const host = ts.createCompilerHost(options);
const { getSourceFile, fileExists, readFile } = host;
host.fileExists = (f) => virtual.has(path.resolve(f)) || fileExists.call(host, f);
host.readFile = (f) => virtual.get(path.resolve(f))?.text ?? readFile.call(host, f);
host.getSourceFile = (f, lang, ...rest) => {
  const v = virtual.get(path.resolve(f));
  return v ? ts.createSourceFile(f, v.text, lang, true) : getSourceFile.call(host, f, lang, ...rest);
};

const program = ts.createProgram([...virtual.keys()], options, host);
const diagnostics = ts.getPreEmitDiagnostics(program);
for (const d of diagnostics) {
  const message = ts.flattenDiagnosticMessageText(d.messageText, '\n  ');
  if (d.file) {
    const { line } = d.file.getLineAndCharacterOfPosition(d.start ?? 0);
    const v = virtual.get(path.resolve(d.file.fileName));
    const where = v ? `${path.relative(root, v.source)} (generated line ${line + 1})` : d.file.fileName;
    const context = v ? `\n    > ${v.text.split('\n')[line].trim()}` : '';
    console.error(`${where}: ${message}${context}`);
  } else {
    console.error(message);
  }
}
if (diagnostics.length > 0) {
  console.error(`${diagnostics.length} type error(s) in ${files.length} dashboard(s)`);
  process.exit(1);
}
console.log(`${files.length} dashboard(s) match the Dashboard type of @grafana/schema`);
