import { native } from "../native.js";
console.log(native.nativeVersion());
