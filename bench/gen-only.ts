import { generateVolume } from './lib/volume-gen.ts';
const g = await generateVolume(process.argv[2]!, Number(process.argv[3]), 1);
console.log(g);
