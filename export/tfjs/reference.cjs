// The parity reference for TF.js exports: the original graph model, run by @tensorflow/tfjs's
// pure-JavaScript CPU backend under node (no TensorFlow, no native code).
//   NODE_PATH=<node_modules with @tensorflow/tfjs> node reference.cjs MODEL_JSON IN_DIR OUT_DIR
// IN_DIR/inputs.json lists {file, shape} of raw little-endian float32 tensors; every output of
// every input is written to OUT_DIR as raw float32, listed with its name and shape in
// OUT_DIR/outputs.json.
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const tf = require('@tensorflow/tfjs');

async function main() {
  const [modelJson, inDir, outDir] = process.argv.slice(2);
  const artifact = JSON.parse(fs.readFileSync(modelJson, 'utf8'));
  const folder = path.dirname(modelJson);
  const groups = artifact.weightsManifest;
  const data = Buffer.concat(groups.flatMap((g) => g.paths).map((p) => fs.readFileSync(path.join(folder, p))));
  await tf.setBackend('cpu');
  const model = await tf.loadGraphModel(tf.io.fromMemory({
    modelTopology: artifact.modelTopology,
    weightSpecs: groups.flatMap((g) => g.weights),
    weightData: data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength),
  }));
  const report = [];
  for (const item of JSON.parse(fs.readFileSync(path.join(inDir, 'inputs.json'), 'utf8'))) {
    const raw = fs.readFileSync(path.join(inDir, item.file));
    const input = tf.tensor(new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4), item.shape, 'float32');
    const outputs = [].concat(model.execute(input));
    const entry = { file: item.file, outputs: [] };
    for (let i = 0; i < outputs.length; i++) {
      const values = await outputs[i].data();
      const file = `${item.file}.${i}.out`;
      fs.writeFileSync(path.join(outDir, file), Buffer.from(values.buffer, values.byteOffset, values.byteLength));
      entry.outputs.push({ name: model.outputs[i].name, file, shape: outputs[i].shape });
    }
    tf.dispose([input, ...outputs]);
    report.push(entry);
  }
  fs.writeFileSync(path.join(outDir, 'outputs.json'), JSON.stringify(report));
}

main().catch((err) => { console.error(err); process.exit(1); });
