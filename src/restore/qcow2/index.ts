export { createQcow2Writer, Qcow2Writer, ImageWriteError, type Qcow2WriterOptions } from './writer.js';
