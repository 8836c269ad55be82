// transformers.js on a gptc model folder, offline: its own tokenizer from the folder, then
// greedy generation. Prints {"prompt_ids", "output_ids"} (new ids only) as JSON.
// usage: node generate.mjs FOLDER PROMPT NEW_TOKENS
import path from 'node:path';
import { env, AutoTokenizer, AutoModelForCausalLM } from '@huggingface/transformers';

const [folder, prompt, newTokens] = process.argv.slice(2);
env.allowRemoteModels = false;
env.localModelPath = path.dirname(path.resolve(folder)) + '/';
const id = path.basename(path.resolve(folder));
const tokenizer = await AutoTokenizer.from_pretrained(id);
const model = await AutoModelForCausalLM.from_pretrained(id, {
  dtype: 'fp32',
  device: 'cpu',
  local_files_only: true,
});
const inputs = tokenizer(prompt);
const promptIds = inputs.input_ids.tolist()[0].map(Number);
// gptc's greedy loop goes on past an end id: so must this one.
const out = await model.generate({
  ...inputs,
  max_new_tokens: Number(newTokens),
  min_new_tokens: Number(newTokens),
  do_sample: false,
});
const ids = out.tolist()[0].map(Number);
console.log(JSON.stringify({ prompt_ids: promptIds, output_ids: ids.slice(promptIds.length) }));
