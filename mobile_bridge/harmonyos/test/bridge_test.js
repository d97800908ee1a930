// Node test of the NAPI glue: node bridge_test.js ADDON.node TEXT MMPROJ OTHER_MMPROJ IMAGE
'use strict';
const fs = require('fs');
const [addonPath, text, mmproj, other, image] = process.argv.slice(2);
const mcv = require(addonPath);
let failures = 0;
const check = (ok, what) => { if (!ok) { console.log('FAIL ' + what); failures++; } };

async function code(p) { try { await p; return 0; } catch (e) { return e.code; } }

async function reply(s, maxTokens) {
  const pieces = [];
  const rc = await mcv.generate(s, { maxTokens }, (p) => pieces.push(p));
  check(rc === 0, `generate rc=${rc}`);
  return pieces.join('');
}

// 0.3: encode the photo ahead of the question; per-image budgets; video frames; cost before encoding
async function prefillAhead(model, img) {
  const cold = mcv.createSession(model);
  const ahead = mcv.createSession(model);
  await mcv.addImage(cold, img);
  mcv.addText(cold, 1, 'What is in the image?');
  const coldReply = await reply(cold, 8);

  await mcv.prefillText(ahead, 0, 'You are terse.');
  check(mcv.stats(ahead).nCtxUsed > 0, 'prefillText evaluated now');
  mcv.reset(ahead);
  const cost = mcv.imageCost(ahead, 400, 300);
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  await mcv.prefillImage(ahead, img);
  clearInterval(timer);
  const pre = mcv.stats(ahead);
  check(pre.lastImageNTokens === cost.nTokens && pre.nEncodedChunks === cost.nChunks && pre.lastImageEncodeMs > 0,
    `prefilled image = its cost ${JSON.stringify(cost)} ${pre.lastImageNTokens}`);
  mcv.addText(ahead, 1, 'What is in the image?');
  const aheadReply = await reply(ahead, 8);
  const post = mcv.stats(ahead);
  check(post.nPrefillTokens > 0 && post.nPrefillTokens < cost.nTokens / 2 && post.nEncodedChunks === pre.nEncodedChunks &&
    post.imageEncodeMs === pre.imageEncodeMs, `question costs its own tokens: ${post.nPrefillTokens}`);
  check(aheadReply === coldReply, 'prefill ahead gives the cold reply');
  check(post.prefillMs > 0 && post.decodeMs >= 0 && post.nDecodeTokens >= 1, 'timings');

  const four = mcv.imageCost(ahead, 1344, 896, { maxSlices: 4 });
  const one = mcv.imageCost(ahead, 1344, 896, { maxSlices: 1 });
  const px = mcv.imageCost(ahead, 1344, 896, { maxPixels: 200 * 100 });
  const frame = mcv.imageCost(ahead, 1344, 896, { videoFrame: true });
  check(four.nChunks > 1 && four.nChunks <= 5 && one.nChunks === 1 && four.nTokens > one.nTokens, 'budgets in the cost');
  check(px.width * px.height <= 200 * 100 && frame.nChunks === 1, 'pixel cap, frame cost');
  const rgb = new Uint8Array(1344 * 896 * 3);
  await mcv.prefillImageRgb(ahead, rgb, 1344, 896, 1344 * 3, { maxSlices: 4 });
  check(mcv.stats(ahead).lastImageNChunks === four.nChunks, 'maxSlices 4 obeyed');
  check(await code(mcv.prefillImageRgb(ahead, rgb, 1344, 896, 1344 * 3, { maxSlices: 99 })) === -13, '99 slices -> -13');
  let threw = 0;
  try { mcv.prefillImageRgb(ahead, new Uint8Array(5), 1344, 896, 1344 * 3); } catch (e) { threw = e.code; }
  check(threw === -1, 'short rgb -> -1');
  await mcv.prefillVideoFrame(ahead, rgb, 1344, 896, 1344 * 3);
  await mcv.prefillVideoFrame(ahead, rgb, 1344, 896, 1344 * 3, true);
  const st = mcv.stats(ahead);
  check(st.nVideoFrames === 2 && st.lastImageNChunks === 1 && st.nImages === 2, 'video frames are no images');
  console.log(`prefill ahead: question ${post.nPrefillTokens} tokens after a ${cost.nTokens}-position image; ` +
    `the event loop ticked ${ticks} times during the prefill`);
  mcv.freeSession(cold);
  mcv.freeSession(ahead);
}

(async () => {
  check(/^\d+\.\d+\.\d+$/.test(mcv.version()), 'version');
  check(await code(mcv.loadModel(text, other, { nCtx: 1024, nThreads: 2 })) === -5, 'mismatch -> -5');
  check(await code(mcv.loadModel('/no/such.gguf', null)) === -2, 'missing -> -2');
  const model = await mcv.loadModel(text, mmproj, { nCtx: 1024, nThreads: 2 });
  const s = mcv.createSession(model);
  check(await code(mcv.addImage(s, new Uint8Array([1, 2, 3]))) === -7, 'garbage image -> -7');
  let threw = 0;
  try { mcv.addText(s, 9, 'x'); } catch (e) { threw = e.code; }
  check(threw === -1, 'bad role -> -1');

  // the image prefill runs off the JS thread: the event loop keeps ticking meanwhile
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  await mcv.addImage(s, fs.readFileSync(image));
  clearInterval(timer);
  mcv.addText(s, 1, 'What is in the image? 🦊');
  const pieces = [];
  const rc = await mcv.generate(s, { maxTokens: 6 }, (p) => pieces.push(p));
  check(rc === 0 && pieces.length >= 1 && pieces.length <= 6, `generate rc=${rc} pieces=${pieces.length}`);
  const st = mcv.stats(s);
  check(st.nImages === 1 && st.imageEncodeMs > 0, 'stats');
  check(mcv.promptText(s, false).includes('🦊'), 'prompt text keeps UTF-8');

  // cancel from the JS thread while the worker generates
  mcv.addText(s, 1, 'Go on.');
  let n = 0;
  const rc2 = await mcv.generate(s, { maxTokens: 0 }, () => { if (++n === 3) mcv.cancel(s); });
  check(rc2 === -9 && n >= 3, `cancel rc=${rc2} pieces=${n}`);
  check(mcv.stats(s).finishReason === 5, 'finish reason cancelled');

  mcv.reset(s);
  check(mcv.promptText(s, false) === '', 'reset');
  await prefillAhead(model, fs.readFileSync(image));
  const s2 = mcv.createSession(model);
  await mcv.addImage(s2, new Uint8Array(fs.readFileSync(image)).buffer);
  check(await mcv.generate(s2, { maxTokens: 3, temperature: 0.7 }, () => {}) === 0, 'second session');
  threw = 0;
  try { mcv.freeModel(model); } catch (e) { threw = e.code; }
  check(threw === -14, 'free model with sessions -> -14');
  mcv.freeSession(s2);
  mcv.freeSession(s);
  mcv.freeModel(model);
  console.log(`node: ${failures} failure(s); image prefill ran while the event loop ticked ${ticks} times`);
  process.exit(failures ? 1 : 0);
})().catch((e) => { console.log('FAIL exception ' + e.stack); process.exit(1); });
