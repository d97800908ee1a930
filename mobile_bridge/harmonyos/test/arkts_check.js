// Type-checks the ArkTS wrapper with OpenHarmony's TypeScript fork (npm ohos-typescript, the
// compiler DevEco's ets-loader embeds): the .ets files against the NAPI module's Index.d.ts, in
// strict mode, then its ArkTS linter (the arkts-no-* rules of ArkTS 1.1, e.g. no `any`, no
// structural typing tricks). Prints every diagnostic; exit 1 when there is one.
//   node arkts_check.js OHOS_TYPESCRIPT_DIR ETS_DIR
'use strict';
const fs = require('fs');
const path = require('path');

const [tsDir, etsDir] = process.argv.slice(2);
if (!tsDir || !etsDir) {
  console.error('usage: node arkts_check.js OHOS_TYPESCRIPT_DIR ETS_DIR');
  process.exit(2);
}
const ts = require(tsDir);
const dts = path.resolve(etsDir, 'Index.d.ts');
const roots = fs.readdirSync(etsDir).filter((f) => f.endsWith('.ets')).map((f) => path.resolve(etsDir, f));
if (roots.length === 0) {
  console.error(`no .ets files in ${etsDir}`);
  process.exit(2);
}

const options = {
  strict: true,
  noEmit: true,
  noImplicitReturns: true,
  target: ts.ScriptTarget.ES2021,
  module: ts.ModuleKind.ES2020,
  moduleResolution: ts.ModuleResolutionKind.NodeJs,
  lib: ['lib.es2021.d.ts'],
  // DevEco's convention for NAPI modules: `import x from 'libfoo.so'` over an Index.d.ts of named
  // exports, the module name mapped to that file (oh-package.json5 "types").
  allowSyntheticDefaultImports: true,
  baseUrl: path.resolve(etsDir),
  paths: { 'libminicpmv_edge_napi.so': [dts] },
  skipLibCheck: false,
  // as DevEco for ArkTS (API 10+): .so imports are resolved and checked, not waved through (28014)
  needDoArkTsLinter: true,
  isCompatibleVersion: false,
  incremental: true,
  tsBuildInfoFile: path.join(require('os').tmpdir(), `arkts-check-${process.pid}.tsbuildinfo`),
};

const host = ts.createIncrementalCompilerHost(options);
const builder = ts.createIncrementalProgram({ rootNames: [...roots, dts], options, host });
const program = builder.getProgram();

const diags = [...ts.getPreEmitDiagnostics(program)];
// The ArkTS linter of this compiler (ts.ArkTSLinter_1_1): lints .ets sources only.
const linter = ts.ArkTSLinter_1_1 || ts;
const lint = linter.runArkTSLinter(builder, undefined, undefined, '1.1')
  .filter((d) => d.file && d.file.fileName.endsWith('.ets'));

const show = (d, kind) => {
  const msg = ts.flattenDiagnosticMessageText(d.messageText, '\n');
  if (d.file && d.start !== undefined) {
    const { line, character } = d.file.getLineAndCharacterOfPosition(d.start);
    console.log(`${kind} ${path.basename(d.file.fileName)}:${line + 1}:${character + 1} ${msg}`);
  } else {
    console.log(`${kind} ${msg}`);
  }
};
diags.forEach((d) => show(d, 'tsc'));
lint.forEach((d) => show(d, 'arkts-linter'));
const sources = program.getSourceFiles().filter((f) => f.fileName.endsWith('.ets'));
console.log(`arkts_check: ${sources.length} .ets file(s) (scriptKind ${sources.map((f) => f.scriptKind).join(',')}), ` +
  `${diags.length} tsc + ${lint.length} linter diagnostic(s), ohos-typescript ${ts.version}`);
process.exit(diags.length + lint.length === 0 && sources.length === roots.length ? 0 : 1);
