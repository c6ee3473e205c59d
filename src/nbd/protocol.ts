/**
 * NBD protocol numbers, as https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md names
 * them: Haven's NBD server (nbd-server.ts) and client (qemu/nbd-client.ts) both use these.
 */
export const NBDMAGIC = 0x4e42444d41474943n;
export const IHAVEOPT = 0x49484156454f5054n;
export const OPT_REPLY_MAGIC = 0x0003e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** Handshake flags (server) and client flags. */
export const FLAG_FIXED_NEWSTYLE = 1;
export const FLAG_NO_ZEROES = 2;

export const Opt = {
  ExportName: 1,
  Abort: 2,
  List: 3,
  StartTls: 5,
  Info: 6,
  Go: 7,
  StructuredReply: 8,
  ListMetaContext: 9,
  SetMetaContext: 10,
} as const;

export const Rep = {
  Ack: 1,
  Server: 2,
  Info: 3,
  MetaContext: 4,
  ErrUnsup: 2 ** 31 + 1,
  ErrPolicy: 2 ** 31 + 2,
  ErrInvalid: 2 ** 31 + 3,
  ErrPlatform: 2 ** 31 + 4,
  ErrTlsReqd: 2 ** 31 + 5,
  ErrUnknown: 2 ** 31 + 6,
  ErrShutdown: 2 ** 31 + 7,
  ErrTooBig: 2 ** 31 + 9,
} as const;

export const Info = { Export: 0, Name: 1, Description: 2, BlockSize: 3 } as const;

/** Transmission flags. */
export const TFlag = {
  HasFlags: 1,
  ReadOnly: 2,
  SendFlush: 4,
  SendFua: 8,
  SendTrim: 32,
  SendWriteZeroes: 64,
  SendDf: 128,
  CanMultiConn: 256,
  SendCache: 1024,
} as const;

export const Cmd = { Read: 0, Write: 1, Disc: 2, Flush: 3, Trim: 4, Cache: 5, WriteZeroes: 6, BlockStatus: 7 } as const;
export const CmdFlag = { Fua: 1, NoHole: 2, Df: 4, ReqOne: 8, FastZero: 16 } as const;

export const ReplyFlagDone = 1;
export const ReplyType = { None: 0, OffsetData: 1, OffsetHole: 2, BlockStatus: 5, Error: 0x8001 } as const;

export const Errno = { EPERM: 1, EIO: 5, ENOMEM: 12, EINVAL: 22, ENOSPC: 28, EOVERFLOW: 75, ENOTSUP: 95, ESHUTDOWN: 108 } as const;

/** `base:allocation` extent flags. */
export const STATE_HOLE = 1;
export const STATE_ZERO = 2;

export const BASE_ALLOCATION = 'base:allocation';

/** The largest request (read or write payload) served: QEMU's own bound (NBD_MAX_BUFFER_SIZE). */
export const MAX_REQUEST_BYTES = 32 * 1024 * 1024;
