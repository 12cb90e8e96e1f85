export async function main(_argv: string[]): Promise<void> {
  process.stdout.write('vmvault (skeleton)\n');
}
