export {
  createQcow2Writer,
  Qcow2Writer,
  QCOW2_MAGIC,
  QCOW_MAX_L1_SIZE,
  type Qcow2WriterOptions,
  type Qcow2WriterStats,
} from './writer.js';
export {
  ImageWriteError,
  IMAGE_WRITE_ERROR,
  isImageWriteError,
  type ImageWriteErrorCode,
  type ImageWriter,
} from '../image-writer.js';
