export * from './errors.js';
export * from './units.js';
export * from './bytes.js';
export * from './async.js';
export * from './log.js';
export * from './progress.js';
export * from './subprocess.js';
export * from './worker-pool.js';
